"""LVIS evaluation with LVIS semantics, faster and in bounded memory.

faster-coco-eval's LVIS mode (`lvis_style=True`: federated annotation, i.e. a category is
evaluated only on images where it is verified present or absent, `neg_category_ids`, and
unmatched detections on `not_exhaustive_category_ids` images are not false positives) computes
what lvis-api's LVISEval computes, in C++. Two things are ours:

- LVIS keeps the 300 best detections per image over all categories; faster-coco-eval's
  `maxDets` limits them per (image, category), so the top 300 per image are taken first.
- Each category's precision depends on that category's ground truth and detections only, so
  the categories are evaluated in chunks, each with a fraction of the memory, and the
  precision arrays joined: AP is then reduced as lvis-api reduces it (the mean of every valid
  precision entry, over all categories or one frequency group).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from mmdet.evaluation import LVISMetric
from mmdet.registry import METRICS

from .errors import UserError
from .files import write_json_atomic

MAX_DETS_PER_IMAGE = 300
FREQUENCY_GROUPS = {"r": "AP_r", "c": "AP_c", "f": "AP_f"}


def top_per_image(detections: list[dict], limit: int = MAX_DETS_PER_IMAGE) -> list[dict]:
    """The `limit` highest-scoring detections of each image, as LVIS counts them."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for det in detections:
        by_image[det["image_id"]].append(det)
    kept = []
    for dets in by_image.values():
        dets.sort(key=lambda d: -d["score"])
        kept += dets[:limit]
    return kept


def _federated(gt: COCO, detections: list[dict]) -> list[dict]:
    """The detections LVIS evaluates: of a category verified present in the image (it has
    ground truth there) or verified absent (neg_category_ids); the rest are ignored. (Dropping
    them first also avoids a crash of faster-coco-eval 1.8's segm path on an image whose
    detections it drops all.)"""
    verified: dict[int, set[int]] = defaultdict(set)
    for image in gt.dataset["images"]:
        verified[image["id"]].update(image.get("neg_category_ids", []))
    for ann in gt.dataset["annotations"]:
        verified[ann["image_id"]].add(ann["category_id"])
    return [d for d in detections if d["category_id"] in verified[d["image_id"]]]


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())


def evaluate(
    ann_file: Path, detections: list[dict] | Path, iou_type: str = "segm", chunk: int = 50
) -> dict:
    """AP, AP_r, AP_c, AP_f (fractions in [0, 1]) and per-category AP of LVIS-format
    detections (`iou_type` "segm" or "bbox"), evaluating `chunk` categories at a time."""
    if isinstance(detections, Path | str):
        try:
            detections = json.loads(Path(detections).read_text())
        except FileNotFoundError:
            raise UserError(f"the detection file {detections} does not exist") from None
    if iou_type not in ("segm", "bbox"):
        raise UserError(f"unknown IoU type {iou_type!r}: use segm or bbox")
    with _quiet():
        gt = COCO(str(ann_file))
    detections = _federated(gt, top_per_image(detections))
    with _quiet():
        dt = gt.loadRes(detections) if detections else None
    cat_ids = sorted(gt.getCatIds())
    if dt is None:  # no detection at all: every category with ground truth has AP 0
        zeros = dict.fromkeys(["AP", *FREQUENCY_GROUPS.values()], 0.0)
        return {**zeros, "per_category": dict.fromkeys(cat_ids, 0.0)}
    # Only the images where a category has ground truth or a detection count for it.
    images_of: dict[int, set[int]] = defaultdict(set)
    for ann in [*gt.dataset["annotations"], *detections]:
        images_of[ann["category_id"]].add(ann["image_id"])
    # Categories seen in as many images go together, so each chunk's image set stays small.
    by_images = sorted(cat_ids, key=lambda c: len(images_of[c]))
    precisions, evaluated = [], []
    for start in range(0, len(by_images), chunk):
        evaluator = COCOeval_faster(gt, dt, iou_type, lvis_style=True, print_function=print)
        params = evaluator.params
        params.catIds = sorted(by_images[start : start + chunk])  # its precision's order
        evaluated += params.catIds
        params.imgIds = sorted(set().union(*(images_of[c] for c in params.catIds)))
        params.maxDets = [MAX_DETS_PER_IMAGE]
        if not params.imgIds:
            shape = (len(params.iouThrs), len(params.recThrs), len(params.catIds))
            precisions.append(np.full(shape, -1.0))
            continue
        with _quiet():
            evaluator.evaluate()
            evaluator.accumulate()
        # [IoU thresholds, recall points, categories, area ranges, maxDets]: area "all".
        precisions.append(evaluator.eval["precision"][:, :, :, 0, -1])
        del evaluator
    order = np.argsort(evaluated)  # back to category id order
    precision = np.concatenate(precisions, axis=2)[:, :, order]
    frequency = np.array([gt.cats[c].get("frequency", "") for c in cat_ids])
    metrics = {"AP": _mean_valid(precision)}
    for group, name in FREQUENCY_GROUPS.items():
        metrics[name] = _mean_valid(precision[:, :, frequency == group])
    metrics["per_category"] = {c: _mean_valid(precision[:, :, [k]]) for k, c in enumerate(cat_ids)}
    return metrics


def _mean_valid(precision: np.ndarray) -> float:
    """lvis-api's reduction: the mean of the entries that are not -1 (-1: no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


@METRICS.register_module()
class FastLVISMetric(LVISMetric):
    """mmdet's LVISMetric, evaluated by `evaluate` above: the numbers lvis-api gives (tested),
    faster, in chunks of categories; the per-category AP goes to `per_category_file` (JSON,
    per metric: category id -> AP in [0, 1], -1 where it has no ground truth)."""

    def __init__(self, ann_file: str, per_category_file: str | None = None, **kwargs) -> None:
        super().__init__(ann_file=ann_file, **kwargs)
        self.ann_file = ann_file
        self.per_category_file = per_category_file

    def compute_metrics(self, results: list) -> dict[str, float]:
        """The LVISMetric keys (`segm_AP`, `segm_APr`, ...), from our evaluation."""
        if self.cat_ids is None:
            self.cat_ids = self._lvis_api.get_cat_ids()
        _, predictions = zip(*results, strict=True)
        with tempfile.TemporaryDirectory() as tmp:
            files = self.results2json(predictions, self.outfile_prefix or f"{tmp}/results")
            if self.format_only:
                return {}
            found, per_category = {}, {}
            for metric in self.metrics:
                evaluation = evaluate(Path(self.ann_file), Path(files[metric]), metric)
                for ours, theirs in (
                    ("AP", "AP"),
                    *((v, f"AP{k}") for k, v in FREQUENCY_GROUPS.items()),
                ):
                    found[f"{metric}_{theirs}"] = evaluation[ours]
                per_category[metric] = evaluation["per_category"]
        if self.per_category_file:
            write_json_atomic(Path(self.per_category_file), per_category)
        return found
