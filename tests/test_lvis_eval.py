"""Our LVIS evaluation equals lvis-api's LVISEval on the same detections, also where the
order of equal scores and equal IoUs decides, and keeps LVIS's 300 best detections per image."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from lvis import LVIS, LVISEval, LVISResults

from seesaw_repro import compat
from seesaw_repro.errors import UserError
from seesaw_repro.evaluation import lvis_eval

_spec = importlib.util.spec_from_file_location(
    "lvis_eval_speed", Path(__file__).parent.parent / "benchmarks" / "lvis_eval_speed.py"
)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def _hard(gt: dict, detections: list[dict], rng: np.random.Generator) -> list[dict]:
    """Make the case decide on order: scores in steps of 0.1 (ties everywhere), duplicated
    ground truth (equal IoUs), images with more than 300 detections, ignored ground truth and
    detections of a category the annotations lack."""
    for det in detections:
        det["score"] = round(det["score"], 1)
    copies = [
        dict(a, id=len(gt["annotations"]) + k + 1) for k, a in enumerate(gt["annotations"][::7])
    ]
    gt["annotations"] += copies
    for ann in gt["annotations"][::23]:
        ann["ignore"] = 1
    extra = [dict(d, score=round(float(rng.random()), 1)) for d in detections[:900]]
    extra += [dict(detections[0], category_id=99999) for _ in range(5)]
    return detections + extra


@pytest.fixture(scope="module", params=["plain", "hard"])
def case(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("lvis-case")
    gt, detections = benchmark.build_case(images=60, seed=1)
    if request.param == "hard":
        detections = _hard(gt, detections, np.random.default_rng(2))
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dets.json").write_text(json.dumps(detections))
    return folder / "gt.json", folder / "dets.json"


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_lvis_api_per_group_and_per_category(case, iou_type, monkeypatch):
    ann, dets = case
    compat.apply()
    gt = LVIS(str(ann))
    reference = LVISEval(gt, LVISResults(gt, str(dets), max_dets=300), iou_type)
    reference.run()
    expected = reference.get_results()
    # small blocks and buckets: the detection file parsed in ~100 pieces, pairs matched in many
    monkeypatch.setattr(lvis_eval, "BUCKET_CELLS", 64)
    items = lvis_eval.json_list_items
    monkeypatch.setattr(
        lvis_eval, "json_list_items", lambda path: items(path, dets.stat().st_size // 100)
    )
    ours = lvis_eval.evaluate(ann, dets, iou_type)
    for name, theirs in (("AP", "AP"), ("AP_r", "APr"), ("AP_c", "APc"), ("AP_f", "APf")):
        assert ours[name] == pytest.approx(expected[theirs], abs=1e-12), name
    precision = reference.eval["precision"][:, :, :, 0]  # lvis-api: [T, R, K, A]
    for k, cat_id in enumerate(reference.params.cat_ids):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        theirs = float(valid.mean()) if valid.size else -1.0
        assert ours["per_category"][cat_id] == pytest.approx(theirs, abs=1e-12), cat_id
    assert 0.1 < ours["AP"] < 0.9 and sum(v > -1 for v in ours["per_category"].values()) > 50


def test_keeps_the_best_300_detections_of_each_image(case):
    ann, _ = case
    gt = lvis_eval.load_ground_truth(ann, "bbox")
    rng = np.random.default_rng(0)
    images, categories = rng.choice(gt.image_ids, 3, replace=False), gt.category_ids
    detections = [
        {"image_id": int(images[i % 3]), "category_id": int(c), "score": float(s), "bbox": [0] * 4}
        for i, (c, s) in enumerate(zip(rng.choice(categories, 1000), rng.random(1000), strict=True))
    ]
    dets = lvis_eval.read_detections(detections, gt, "bbox")
    kept = lvis_eval.evaluated_order(dets, gt)
    verified = set(gt.verified.tolist())
    for image in images:
        mine = [k for k, d in enumerate(detections) if d["image_id"] == image]
        best = sorted(mine, key=lambda k: -detections[k]["score"])[:300]
        expected = {k for k in best if int(dets.pair[k]) in verified}
        assert {k for k in kept.tolist() if detections[k]["image_id"] == image} == expected


def test_no_detection_at_all_is_zero_ap_where_there_is_ground_truth(case):
    ann, _ = case
    found = lvis_eval.evaluate(ann, [], "bbox")
    data = json.loads(ann.read_text())
    with_gt = {a["category_id"] for a in data["annotations"]}
    for group, name in lvis_eval.FREQUENCY_GROUPS.items():
        has_gt = any(c["frequency"] == group and c["id"] in with_gt for c in data["categories"])
        assert found[name] == (0.0 if has_gt else -1.0), name  # -1: lvis-api's "no data"
    assert found["AP"] == 0.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"image_id": 1}', "not a JSON list"),
        (
            '[{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}',
            "not valid JSON",
        ),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]', "needs image_id"),
        ('[{"image_id": 123456, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}]', "lacks"),
    ],
)
def test_a_broken_detection_file_is_one_clear_error(case, tmp_path, content, message):
    ann, _ = case
    (tmp_path / "dets.json").write_text(content)
    with pytest.raises(UserError, match=message):
        lvis_eval.evaluate(ann, tmp_path / "dets.json", "bbox")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_broken_ground_truth_mask_is_named_as_such(case, tmp_path, workers):
    """Ground-truth masks become RLE where detections need them, in the processes that read
    the detections: a bad one is the annotation file's error, not a detection's."""
    ann, dets = case
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentation"] = "a file name, not a mask"
    (tmp_path / "gt.json").write_text(json.dumps(data))
    annotation = data["annotations"][0]["id"]
    with pytest.raises(UserError, match=f"annotation {annotation} of the annotation file"):
        lvis_eval.evaluate(tmp_path / "gt.json", dets, "segm", workers)


def test_equal_ious_go_to_the_last_ground_truth_as_in_lvis_api(tmp_path):
    """The first detection overlaps both instances equally (IoU 0.5); lvis-api gives it the
    second, so the second detection, which fits only the second instance, is a false positive
    at IoU 0.5."""
    gt = {
        "images": [
            {
                "id": 1,
                "width": 40,
                "height": 20,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100.0}
            for k, box in enumerate([[0, 0, 10, 10], [10, 0, 10, 10]])
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 0, 10, 10], "score": 0.8},
    ]
    compat.apply()
    lvis_gt = LVIS(str(tmp_path / "gt.json"))
    reference = LVISEval(lvis_gt, LVISResults(lvis_gt, dets), "bbox")
    reference.run()
    ours = lvis_eval.evaluate(tmp_path / "gt.json", dets, "bbox")
    assert ours["AP"] == pytest.approx(reference.get_results()["AP"], abs=1e-12)


def test_the_detection_file_is_read_in_blocks_whatever_its_strings_hold(tmp_path):
    items = [{"image_id": k, "note": "}, {" * (k % 3), "x": [k, {"y": "}, {"}]} for k in range(500)]
    (tmp_path / "items.json").write_text(json.dumps(items))
    for block in (1, 7, 100, 10**6):
        read = lvis_eval.json_list_items(tmp_path / "items.json", block_bytes=block)
        assert [item for batch in read for item in batch] == items, block


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_a_file_read_in_parallel_blocks_gives_the_same_evaluation(
    case, iou_type, monkeypatch, tmp_path
):
    ann, dets = case
    in_one_process = lvis_eval.evaluate(ann, dets, iou_type)
    monkeypatch.setattr(lvis_eval, "BLOCK_BYTES", dets.stat().st_size // 20)
    assert lvis_eval.evaluate(ann, dets, iou_type, workers=2) == in_one_process
    # "}, {" inside strings: some blocks are cut inside a string and do not parse, so the
    # file is read again in one process
    noted = [dict(d, note="}, {" * 50) for d in json.loads(dets.read_text())]
    (tmp_path / "noted.json").write_text(json.dumps(noted))
    blocks = list(lvis_eval._json_list_blocks(tmp_path / "noted.json"))
    assert len(blocks) > 10 and not all(_parses(block) for block in blocks)
    assert lvis_eval.evaluate(ann, tmp_path / "noted.json", iou_type, workers=2) == in_one_process


def _parses(text: bytes) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
