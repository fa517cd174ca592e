"""Our LVIS evaluation equals lvis-api's LVISEval on the same detections, whatever the
category chunking, and keeps the 300 best detections per image as LVIS does."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from lvis import LVIS, LVISEval, LVISResults

from seesaw_repro import compat, lvis_eval

_spec = importlib.util.spec_from_file_location(
    "lvis_eval_speed", Path(__file__).parent.parent / "benchmarks" / "lvis_eval_speed.py"
)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lvis-case")
    gt, detections = benchmark.build_case(images=60, seed=1)
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dets.json").write_text(json.dumps(detections))
    return folder / "gt.json", folder / "dets.json"


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_lvis_api_per_group_and_per_category(case, iou_type):
    ann, dets = case
    compat.apply()
    gt = LVIS(str(ann))
    reference = LVISEval(gt, LVISResults(gt, str(dets), max_dets=300), iou_type)
    reference.run()
    expected = reference.get_results()
    for chunk in (1, 50, 1203):
        ours = lvis_eval.evaluate(ann, dets, iou_type, chunk=chunk)
        for name, theirs in (("AP", "AP"), ("AP_r", "APr"), ("AP_c", "APc"), ("AP_f", "APf")):
            assert ours[name] == pytest.approx(expected[theirs], abs=1e-12), (chunk, name)
    precision = reference.eval["precision"][:, :, :, 0]  # lvis-api: [T, R, K, A]
    for k, cat_id in enumerate(reference.params.cat_ids):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        theirs = float(valid.mean()) if valid.size else -1.0
        assert ours["per_category"][cat_id] == pytest.approx(theirs, abs=1e-12), cat_id
    assert 0.1 < ours["AP"] < 0.9 and sum(v > -1 for v in ours["per_category"].values()) > 50


def test_keeps_the_best_300_detections_of_each_image():
    rng = np.random.default_rng(0)
    detections = [
        {"image_id": i % 3, "category_id": int(c), "score": float(s)}
        for i, (c, s) in enumerate(zip(rng.integers(1, 9, 1000), rng.random(1000), strict=True))
    ]
    kept = lvis_eval.top_per_image(detections, limit=300)
    for image in range(3):
        own = sorted((d["score"] for d in detections if d["image_id"] == image), reverse=True)
        assert (
            sorted((d["score"] for d in kept if d["image_id"] == image), reverse=True) == own[:300]
        )


def test_no_detection_at_all_is_zero_ap(case):
    ann, _ = case
    found = lvis_eval.evaluate(ann, [], "bbox")
    assert found["AP"] == found["AP_r"] == found["AP_c"] == found["AP_f"] == 0.0
