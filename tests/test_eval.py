"""The evaluation the runs use (mmdet's LVISMetric on lvis-api, with the numpy fix) gives the
paper's five metrics, and they mean what they say on detections we know the answer for."""

import json

import numpy as np
import pytest
import torch
from lvis import LVIS
from mmdet.evaluation import LVISMetric

from seesaw_repro import compat, synth
from seesaw_repro.hooks import paper_metrics


def _evaluate(root, drop_frequency=None):
    compat.apply()
    ann_file = synth.annotation_paths(root)["val"]
    lvis = LVIS(str(ann_file))
    label_of = {cat_id: i for i, cat_id in enumerate(sorted(lvis.cats))}
    frequency = {c["id"]: c["frequency"] for c in json.loads(ann_file.read_text())["categories"]}
    metric = LVISMetric(ann_file=str(ann_file), metric=["bbox", "segm"])
    metric.dataset_meta = {"classes": [lvis.cats[c]["name"] for c in sorted(lvis.cats)]}
    for img_id in lvis.get_img_ids():
        anns = [
            a
            for a in lvis.load_anns(lvis.get_ann_ids(img_ids=[img_id]))
            if frequency[a["category_id"]] != drop_frequency
        ]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        masks = np.stack([lvis.ann_to_mask(a) for a in anns]) if anns else np.zeros((0, 128, 128))
        sample = {
            "img_id": img_id,
            "ori_shape": (128, 128),
            "pred_instances": {
                "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor(
                    [label_of[a["category_id"]] for a in anns], dtype=torch.long
                ),
                "masks": torch.from_numpy(masks.astype(bool)),
            },
        }
        metric.process({}, [sample])
    return paper_metrics(
        {f"lvis/{k}": v for k, v in metric.compute_metrics(metric.results).items()}
    )


def test_ground_truth_as_detections_scores_100(quick_data):
    assert _evaluate(quick_data) == {m: 100.0 for m in ["AP", "AP_r", "AP_c", "AP_f", "AP_box"]}


def test_missing_rare_detections_lower_only_ap_r(quick_data):
    metrics = _evaluate(quick_data, drop_frequency="r")
    assert metrics["AP_r"] == 0.0
    assert metrics["AP_c"] == 100.0 and metrics["AP_f"] == 100.0
    assert 0 < metrics["AP"] < 100


def test_paper_metrics_names_what_is_missing():
    with pytest.raises(KeyError, match="segm_APr"):
        paper_metrics({"lvis/segm_AP": 0.1})
