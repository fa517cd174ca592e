import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from lvis import LVIS

from seesaw_repro.data import synth
from seesaw_repro.errors import UserError
from seesaw_repro.paper import presets


def _load(root, split):
    return json.loads(synth.annotation_paths(root)[split].read_text())


def test_frequency_groups_follow_lvis_image_count_thresholds(tiny_data):
    train = _load(tiny_data, "train")
    images_per_cat = defaultdict(set)
    instances_per_cat = Counter()
    for ann in train["annotations"]:
        images_per_cat[ann["category_id"]].add(ann["image_id"])
        instances_per_cat[ann["category_id"]] += 1
    for cat in train["categories"]:
        image_count = len(images_per_cat[cat["id"]])
        assert cat["image_count"] == image_count
        assert cat["instance_count"] == instances_per_cat[cat["id"]]
        expected = "r" if image_count <= 10 else "c" if image_count <= 100 else "f"
        assert cat["frequency"] == expected, cat
    groups = Counter(cat["frequency"] for cat in train["categories"])
    assert set(groups) == {"r", "c", "f"}
    assert min(groups.values()) >= 5


def test_head_to_tail_instance_ratio_is_at_least_100(tiny_data):
    counts = [cat["instance_count"] for cat in _load(tiny_data, "train")["categories"]]
    assert min(counts) >= 1
    assert max(counts) / min(counts) >= 100


def test_val_covers_every_category_and_uses_train_counts(tiny_data):
    train, val = _load(tiny_data, "train"), _load(tiny_data, "val")
    assert val["categories"] == train["categories"]
    assert {a["category_id"] for a in val["annotations"]} == {c["id"] for c in val["categories"]}
    assert not {a["image_id"] for a in val["annotations"]} & {i["id"] for i in train["images"]}


def test_negative_categories_are_exactly_the_absent_ones(tiny_data):
    val = _load(tiny_data, "val")
    present = defaultdict(set)
    for ann in val["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    all_ids = {c["id"] for c in val["categories"]}
    for img in val["images"]:
        assert set(img["neg_category_ids"]) == all_ids - present[img["id"]]
        assert img["not_exhaustive_category_ids"] == []


def test_loads_in_lvis_api_and_masks_match_boxes(tiny_data):
    lvis = LVIS(str(synth.annotation_paths(tiny_data)["val"]))
    ann = lvis.load_anns(lvis.get_ann_ids(img_ids=[lvis.get_img_ids()[0]]))[0]
    mask = lvis.ann_to_mask(ann)
    ys, xs = mask.nonzero()
    x, y, w, h = ann["bbox"]
    assert mask.sum() > 20
    assert (xs.min(), ys.min()) == (x, y)
    assert (xs.max() + 1, ys.max() + 1) == (x + w, y + h)
    assert ann["area"] == mask.sum()


def test_loads_in_mmdet_lvis_v1_dataset(tiny_data):
    from mmdet.datasets import LVISV1Dataset

    dataset = LVISV1Dataset(
        data_root=str(tiny_data),
        ann_file="annotations/lvis_v1_train.json",
        data_prefix={"img": ""},
        pipeline=[],
    )
    assert len(dataset) == presets.TINY.synth.num_train_images
    item = dataset[0]
    assert item["img_path"].startswith(str(tiny_data / "train2017"))
    assert (tiny_data / "train2017" / item["img_path"].split("/")[-1]).exists()
    labels = {inst["bbox_label"] for inst in item["instances"]}
    assert labels <= set(range(presets.TINY.synth.num_categories))


def _digest(root):
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


@pytest.mark.slow
def test_same_seed_same_files_other_seed_other_files(tmp_path):
    small = replace(presets.TINY.synth, num_train_images=320, num_val_images=20)
    synth.generate(tmp_path / "a", small)
    synth.generate(tmp_path / "b", small)
    synth.generate(tmp_path / "c", replace(small, seed=1))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_check_names_what_is_missing(tmp_path, tiny_data):
    with pytest.raises(UserError, match="does not exist"):
        synth.check(tmp_path / "nowhere", presets.TINY.synth)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="lvis_v1_train.json"):
        synth.check(tmp_path / "empty", presets.TINY.synth)
    with pytest.raises(UserError, match="generated with"):
        synth.check(tiny_data, replace(presets.TINY.synth, seed=7))
    synth.check(tiny_data, presets.TINY.synth)


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda root: _cut(root / "annotations/lvis_v1_train.json"), "is not valid JSON"),
        (lambda root: (root / "annotations/lvis_v1_val.json").write_text("[]"), "not an LVIS"),
        (
            lambda root: (root / "annotations/lvis_v1_train.json").write_bytes(bytes(range(256))),
            "is not valid JSON",
        ),
        (lambda root: shutil.rmtree(root / "val2017"), "400 of the 400 val images are missing"),
    ],
)
def test_a_damaged_data_root_is_named_before_any_run(tmp_path, tiny_data, damage, expected):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    damage(root)
    with pytest.raises(UserError, match=expected):
        synth.check(root, presets.TINY.synth)


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_full_disk_while_generating_is_one_line(tmp_path, small_disk):
    disk = small_disk(1 << 20)
    seesaw = Path(sys.executable).parent / "seesaw"
    result = subprocess.run(
        [str(seesaw), "data", "synth", "--out", str(disk / "d")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if "libpng" not in line]
    assert len(ours) == 1 and ours[0].startswith("error: could not write the image")
    assert "the disk is full" in ours[0]
    assert result.stderr.count("libpng error") <= 1  # stopped at the first image


ENSURE = {
    "lvis": "from seesaw_repro.data import synth\nfrom seesaw_repro.paper import presets\n"
    "from dataclasses import replace\n"
    "spec = replace(presets.TINY.synth, num_train_images=320, num_val_images=20)\n"
    "synth.ensure(Path(sys.argv[1]), spec)",
    "digits": "from seesaw_repro.data import imagenet_lt\n"
    "imagenet_lt.ensure_digits(Path(sys.argv[1]), imagenet_lt.DigitsLTSpec())",
}


def _ensure(kind: str, root) -> subprocess.Popen:
    code = f"import sys\nfrom pathlib import Path\n{ENSURE[kind]}"
    return subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ENSURE))
def test_concurrent_first_runs_generate_the_data_once_and_a_killed_one_is_redone(kind, tmp_path):
    alone = tmp_path / "alone"
    assert _ensure(kind, alone).wait() == 0
    root = tmp_path / "data"
    # a generation killed midway leaves a partial folder, never the data root itself
    first = _ensure(kind, root)
    partial = tmp_path / ".data.partial"
    while not partial.exists() and first.poll() is None:
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert not root.exists()
    # three at once, as three `seesaw repro` started together: all succeed, on the same data
    together = [_ensure(kind, root) for _ in range(3)]
    errors = [p.communicate()[1].decode() for p in together]
    assert [p.returncode for p in together] == [0, 0, 0], errors
    assert not partial.exists()
    assert _digest(root) == _digest(alone)


@pytest.mark.slow  # generates the data
def test_lvis_shaped_data_has_lvis_v1s_categories_groups_and_federated_labels(lvis_shaped):
    import cv2

    train, val = _load(lvis_shaped, "train"), _load(lvis_shaped, "val")
    assert train["categories"] == val["categories"]
    categories = train["categories"]
    assert [c["id"] for c in categories] == list(range(1, 1204))
    assert Counter(c["frequency"] for c in categories) == {"r": 337, "c": 461, "f": 405}
    own = defaultdict(list)
    for ann in train["annotations"]:
        own[ann["category_id"]].append(ann["image_id"])
    for category in categories:
        assert category["instance_count"] == len(own[category["id"]])
        assert category["image_count"] == len(set(own[category["id"]]))
    for data in (train, val):
        present = defaultdict(set)
        for ann in data["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        for image in data["images"]:
            assert (image["width"], image["height"]) in synth.COCO_SIZES
            path = lvis_shaped / image["coco_url"].removeprefix(synth.LVIS_URL_PREFIX)
            assert cv2.imread(str(path)).shape[:2] == (image["height"], image["width"])
            negatives = set(image["neg_category_ids"])
            assert len(negatives) == 20 and not negatives & present[image["id"]]
            assert set(image["not_exhaustive_category_ids"]) <= present[image["id"]]
    # every group has instances to evaluate, and the paper preset takes it as an LVIS v1 root
    val_groups = {categories[a["category_id"] - 1]["frequency"] for a in val["annotations"]}
    assert val_groups == {"r", "c", "f"}
    assert presets.PAPER.prepare_data(lvis_shaped, lvis_shaped) == lvis_shaped
    lvis = LVIS(str(synth.annotation_paths(lvis_shaped)["val"]))  # lvis-api reads it
    assert len(lvis.get_img_ids()) == 12 and len(lvis.get_cat_ids()) == 1203
