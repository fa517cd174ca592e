"""The LVIS evaluation: mmdet's LVISMetric on lvis-api (with the numpy fix) gives the paper's
five metrics, which mean what they say on detections we know the answer for, and the metric
the runs use (lvis_metric.FastLVISMetric) gives lvis-api's numbers, keys and per-category AP."""

import json

import numpy as np
import pytest
import torch
from lvis import LVIS
from mmdet.evaluation import LVISMetric

from seesaw_repro import compat
from seesaw_repro.data import synth
from seesaw_repro.training.hooks import paper_metrics


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


def _noisy_samples(root, seed: int = 0) -> tuple[list[dict], LVIS]:
    """Detections of every val image as a half-trained model gives them: each ground-truth
    instance found with a jittered box, an eroded or shifted mask, a random score and
    sometimes the wrong category, plus false positives."""
    lvis = LVIS(str(synth.annotation_paths(root)["val"]))
    cat_ids = sorted(lvis.cats)
    rng = np.random.default_rng(seed)
    samples = []
    for img_id in lvis.get_img_ids():
        anns = lvis.load_anns(lvis.get_ann_ids(img_ids=[img_id]))
        boxes, labels, masks = [], [], []
        for a in anns + [anns[0]] * 2:  # two false positives, near the first instance
            x, y, w, h = np.array(a["bbox"]) + rng.normal(0, 2, 4)
            boxes.append([x, y, x + max(w, 1), y + max(h, 1)])
            wrong = rng.random() < 0.3
            labels.append(rng.integers(len(cat_ids)) if wrong else cat_ids.index(a["category_id"]))
            masks.append(np.roll(lvis.ann_to_mask(a), rng.integers(-2, 3), axis=1))
        samples.append(
            {
                "img_id": img_id,
                "ori_shape": (128, 128),
                "pred_instances": {
                    "bboxes": torch.tensor(np.array(boxes), dtype=torch.float32),
                    "scores": torch.from_numpy(rng.random(len(boxes)).astype(np.float32)),
                    "labels": torch.tensor(labels, dtype=torch.long),
                    "masks": torch.from_numpy(np.stack(masks).astype(bool)),
                },
            }
        )
    return samples, lvis


def test_fast_lvis_metric_the_runs_use_gives_lvis_apis_numbers_and_per_category_file(
    quick_data, tmp_path
):
    from lvis import LVISEval, LVISResults

    from seesaw_repro.training.lvis_metric import FastLVISMetric

    compat.apply()
    ann_file = str(synth.annotation_paths(quick_data)["val"])
    samples, lvis = _noisy_samples(quick_data)
    meta = {"classes": [lvis.cats[c]["name"] for c in sorted(lvis.cats)]}
    per_category_file = tmp_path / "per_category_ap.json"
    ours = FastLVISMetric(
        ann_file=ann_file,
        metric=["bbox", "segm"],
        per_category_file=str(per_category_file),
        outfile_prefix=str(tmp_path / "ours"),
    )
    reference = LVISMetric(ann_file=ann_file, metric=["bbox", "segm"])
    for metric in (ours, reference):
        metric.dataset_meta = meta
        for sample in samples:
            metric.process({}, [sample])
    found = ours.compute_metrics(ours.results)
    expected = reference.compute_metrics(reference.results)
    # the keys hooks.paper_metrics reads, with lvis-api's values
    paper = {f"{m}_{k}" for m in ("bbox", "segm") for k in ("AP", "APr", "APc", "APf")}
    assert paper <= set(found)
    for key in sorted(found):  # mmdet's LVISMetric rounds to 3 decimals
        assert found[key] == pytest.approx(expected[key], abs=5e-4 + 1e-9), key
    assert 0.05 < found["segm_AP"] < 0.95  # neither nothing nor everything found
    # the result file it wrote, and each category's AP, as lvis-api's LVISEval has them
    per_category = json.loads(per_category_file.read_text())
    for iou_type in ("bbox", "segm"):
        results = LVISResults(lvis, str(tmp_path / f"ours.{iou_type}.json"))
        evaluation = LVISEval(lvis, results, iou_type)
        evaluation.run()
        precision = evaluation.eval["precision"][:, :, :, 0]  # area "all"
        for k, cat_id in enumerate(evaluation.params.cat_ids):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            want = float(valid.mean()) if valid.size else -1.0
            assert per_category[iou_type][str(cat_id)] == pytest.approx(want, abs=1e-6)
