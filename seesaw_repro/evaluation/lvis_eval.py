"""LVIS evaluation: what lvis-api's LVISEval computes, over arrays instead of dicts.

lvis-api keeps every detection as a Python dict and matches each (image, category) in Python
loops, which on LVIS v1 val takes tens of minutes and 20-30 GB. The same steps here:

1. The detection file is parsed a block at a time into arrays (image, category, score, box),
   the blocks in parallel processes where `workers` > 1. Masks are compared with the ground
   truth of their (image, category) as their block is read (pycocotools, one call per pair),
   the only IoUs needed, and only those IoUs are kept.
2. LVIS's 300 best detections per image, then its federated filter: a category counts on an
   image only where it is verified present (it has ground truth there) or absent
   (`neg_category_ids`).
3. Box IoUs of each detection with the ground truth of its (image, category), in numpy.
4. lvis-api's greedy matching, for every (image, category) pair of a size bucket at once:
   highest score first, each detection takes the unmatched ground truth of highest IoU at or
   above the threshold (the last one on ties), an ignored one only if no other is left.
5. lvis-api's accumulation per category: detections in its order (score, then image, then
   rank in the image), unmatched ones on `not_exhaustive_category_ids` images ignored,
   precision made monotone and read at 101 recall points, for 10 IoU thresholds.

Only the area range "all" is computed (the one the tables report). Equal to lvis-api per
frequency group and per category (tests/test_lvis_eval.py). numpy and pycocotools only: the
mmdet metric the runs use is lvis_metric.FastLVISMetric.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import multiprocessing
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pycocotools import mask as mask_utils

from seesaw_repro.errors import UserError

MAX_DETS_PER_IMAGE = 300
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
LARGEST_AREA = 1e10  # lvis-api's area range "all" is [0, 1e10]
FREQUENCY_GROUPS = {"r": "AP_r", "c": "AP_c", "f": "AP_f"}
# The paper's LVIS columns: the names metrics.json, the report and the recipes use. AP and its
# frequency groups are mask AP; AP_box is box AP.
LVIS_COLUMNS = ("AP", *FREQUENCY_GROUPS.values(), "AP_box")


def mmdet_key(iou_type: str, name: str) -> str:
    """mmdet's LVISMetric key of an `evaluate` result: ("segm", "AP_r") -> "segm_APr"."""
    return f"{iou_type}_{name.replace('_', '')}"


def column_key(column: str) -> str:
    """mmdet's LVISMetric key of a paper column: "AP_r" -> "segm_APr", "AP_box" -> "bbox_AP"."""
    return mmdet_key("bbox", "AP") if column == "AP_box" else mmdet_key("segm", column)


BUCKET_CELLS = 1 << 22  # (pair, detection, ground truth) cells matched at once: bounds memory


@dataclass
class GroundTruth:
    """An LVIS annotation file as arrays. A pair key is image index * categories + category
    index; the annotations are sorted by it (file order within a pair, as lvis-api)."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    frequency: np.ndarray
    pair: np.ndarray
    box: np.ndarray
    ignored: np.ndarray
    masks: list | None  # segm: each annotation's segmentation, (height, width) and id
    verified: np.ndarray  # sorted pair keys: present (ground truth) or neg_category_ids
    not_exhaustive: np.ndarray  # sorted pair keys of not_exhaustive_category_ids

    def locate(
        self, image_ids: Iterable[int], category_ids: Iterable[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image index and pair key of each (image id, category id); pair key -1 for a
        category this file lacks (lvis-api skips those); an image it lacks is an error, as in
        lvis-api."""
        images = _numbers(image_ids, True, "image_id")
        categories = _numbers(category_ids, True, "category_id")
        image = _index_in(self.image_ids, images)
        if (image < 0).any():
            raise UserError(
                f"detections of image {images[image < 0][0]}, which the annotation file lacks: "
                "evaluate against the annotations of the split the detections are of"
            )
        category = _index_in(self.category_ids, categories)
        return image, np.where(category < 0, -1, image * len(self.category_ids) + category)

    def instances(self, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the annotations of each pair key start, and how many there are (none for
        key -1 or a pair without ground truth)."""
        first = np.searchsorted(self.pair, pair, "left")
        return first, np.where(pair >= 0, np.searchsorted(self.pair, pair, "right") - first, 0)


def _numbers(values: Iterable, whole: bool, field: str) -> np.ndarray:
    """`values` as an array, if each is a JSON number (a whole one if `whole`) and finite:
    lvis-api fails on a string image_id and ranks a null score first."""
    values = list(values)
    array = np.array(values)
    kind = array.dtype.kind
    if array.size and (
        kind not in ("iu" if whole else "iuf") or (kind == "f" and not np.isfinite(array).all())
    ):
        bad = next((v for v in values if not _is_number(v, whole)), values[0])
        raise UserError(
            f"every {field} must be {'a whole' if whole else 'a finite'} number, not {bad!r}"
        )
    return array.astype(np.int64 if whole else np.float64, copy=False)


def _is_number(value: Any, whole: bool) -> bool:
    if whole:
        return type(value) is int
    return type(value) in (int, float) and math.isfinite(value)


def _index_in(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each id in `sorted_ids`, -1 where it is not there."""
    index = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[index] == ids, index, -1)


def _is_in(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    return _index_in(sorted_keys, keys) >= 0 if len(sorted_keys) else np.zeros(len(keys), bool)


def load_ground_truth(ann_file: Path, iou_type: str) -> GroundTruth:
    """Read an LVIS annotation file. Masks (segm) become RLE where detections need them
    (_mask_ious): in the processes that read the detections, for their pairs only."""
    try:
        data = json.loads(Path(ann_file).read_text())
        images = sorted(data["images"], key=lambda image: image["id"])
        categories = sorted(data["categories"], key=lambda category: category["id"])
        annotations = data["annotations"]
    except FileNotFoundError:
        raise UserError(f"the annotation file {ann_file} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"the annotation file {ann_file} is a folder") from None
    except (ValueError, KeyError, TypeError) as error:  # ValueError: not JSON or not UTF-8
        raise UserError(
            f"{ann_file} is not an LVIS annotation file ({type(error).__name__}: {error})"
        ) from None
    if not annotations:
        raise UserError(
            f"{ann_file} has no annotations: an image-info file (such as test-dev's) cannot be "
            "evaluated here; the LVIS evaluation server scores test-dev"
        )
    gt = GroundTruth(
        image_ids=np.array([image["id"] for image in images], dtype=np.int64),
        category_ids=np.array([category["id"] for category in categories], dtype=np.int64),
        frequency=np.array([category.get("frequency", "") for category in categories]),
        pair=np.zeros(0, np.int64),
        box=np.zeros((0, 4)),
        ignored=np.zeros(0, bool),
        masks=None,
        verified=np.zeros(0, np.int64),
        not_exhaustive=np.zeros(0, np.int64),
    )
    _, pair = gt.locate(
        (a["image_id"] for a in annotations), (a["category_id"] for a in annotations)
    )
    order = np.argsort(pair, kind="stable")
    annotations = [annotations[i] for i in order]
    gt.pair = pair[order]
    gt.box = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    gt.ignored = np.array(
        [bool(a.get("ignore", 0)) or not 0 <= a["area"] <= LARGEST_AREA for a in annotations],
        dtype=bool,
    )
    if iou_type == "segm":
        size = {image["id"]: (image["height"], image["width"]) for image in images}
        gt.masks = [(a["segmentation"], size[a["image_id"]], a.get("id")) for a in annotations]

    def listed(field: str) -> np.ndarray:
        ids = [(image["id"], c) for image in images for c in image.get(field, [])]
        return gt.locate((i for i, _ in ids), (c for _, c in ids))[1]

    gt.verified = np.union1d(gt.pair, listed("neg_category_ids"))
    gt.not_exhaustive = np.unique(listed("not_exhaustive_category_ids"))
    return gt


def _rle(segmentation: list | dict, size: tuple[int, int], annotation_id: int | None) -> dict:
    """An annotation's mask as compressed RLE, from polygons, uncompressed or compressed RLE
    (lvis-api's ann_to_rle)."""
    try:
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, *size))
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, *size)
        return segmentation
    except Exception as error:  # pycocotools raises plain Exceptions on bad polygons
        raise UserError(
            f"annotation {annotation_id} of the annotation file: its segmentation is neither "
            f"polygons nor RLE ({error!r})"
        ) from None


ITEM_BOUNDARY = re.compile(rb"\}\s*,\s*\{")  # "}, {" between two objects of a list
# A detection file is read this much at a time: a block's objects, parsed, then compared
# mask by mask, then freed, stay in the CPU's caches (reading 1,000 images' masks in 2
# workers: 8 MB blocks 0.78 s, 512 KB 0.6 s; an hour later, on a busier host, 1.0 and 0.9 s).
BLOCK_BYTES = 1 << 19


def json_list_items(path: Path, block_bytes: int | None = None) -> Iterator[list]:
    """The items of the JSON list (of objects) in `path`, one list per block of the file: a
    detection file of the full val set holds millions of detections, gigabytes parsed whole."""
    with open(path, "rb") as file:
        text = bytearray(file.read(block_bytes or BLOCK_BYTES).lstrip())
        if not text.startswith(b"["):
            raise UserError(f"{path} is not a JSON list of detections")
        while more := file.read(block_bytes or BLOCK_BYTES):
            text += more
            items, text = _complete_items(text)
            yield items
        try:
            yield orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON: {error}") from None


def _complete_items(text: bytearray) -> tuple[list, bytearray]:
    """The objects of `text` (a JSON list from its "[" on) up to its last "}, {" between two
    of them, and "[" with the text after it. A "}, {" inside a string does not parse as the
    end of a list, so the one before it is tried. The list is closed in place (the byte after
    the "}" becomes "]"), as copying blocks of the file cost a tenth of the evaluation."""
    tail = max(0, len(text) - (1 << 16))
    for start in (tail, 0) if tail else (0,):
        for boundary in reversed(list(ITEM_BOUNDARY.finditer(text, start))):
            end = boundary.start() + 1
            separator, text[end] = text[end], ord("]")
            try:
                with memoryview(text) as view:
                    items = orjson.loads(view[: end + 1])
            except orjson.JSONDecodeError:
                text[end] = separator
                continue
            return items, bytearray(b"[") + text[boundary.end() - 1 :]
    return [], text  # no complete item yet: read on


def _json_list_blocks(path: Path) -> Iterator[bytes]:
    """The file's JSON list cut into JSON lists at a "}, {" near the end of each block, not
    parsed: a cut inside a string leaves the list before it unparsable (an open string)."""
    with open(path, "rb") as file:
        text = file.read(BLOCK_BYTES).lstrip()
        if not text.startswith(b"["):
            raise UserError(f"{path} is not a JSON list of detections")
        while more := file.read(BLOCK_BYTES):
            text += more
            tail = max(0, len(text) - (1 << 16))
            cuts = list(ITEM_BOUNDARY.finditer(text, tail)) or list(ITEM_BOUNDARY.finditer(text))
            if cuts:
                yield text[: cuts[-1].start() + 1] + b"]"
                text = b"[" + text[cuts[-1].end() - 1 :]
        yield text


@dataclass
class Detections:
    """Detections as arrays, in file order. For masks, `iou` holds each detection's IoUs with
    the ground truth of its (image, category), n entries from iou_start[i] where that pair has
    n instances (none where it has none): the only IoUs the evaluation needs."""

    pair: np.ndarray
    image: np.ndarray
    score: np.ndarray
    box: np.ndarray | None = None
    iou: np.ndarray | None = None
    iou_start: np.ndarray | None = None


def read_detections(batch: list[dict], gt: GroundTruth, iou_type: str) -> Detections:
    """Detections in the LVIS results format (image_id, category_id, score, bbox or
    segmentation as RLE) as arrays: boxes (bbox) or the masks' IoUs (segm)."""
    try:
        image, pair = gt.locate((d["image_id"] for d in batch), (d["category_id"] for d in batch))
        score = _numbers((d["score"] for d in batch), False, "score")
        if iou_type == "bbox":
            box = np.array([d["bbox"] for d in batch], dtype=np.float64).reshape(-1, 4)
            return Detections(pair, image, score, box=box)
        iou, iou_start = _mask_ious(batch, pair, gt)
        return Detections(pair, image, score, iou=iou, iou_start=iou_start)
    except (KeyError, TypeError, ValueError) as error:
        field = "bbox" if iou_type == "bbox" else "segmentation (RLE)"
        raise UserError(
            f"a detection is malformed ({error!r}): each needs image_id, category_id, score "
            f"and {field}"
        ) from None


def _mask_ious(
    batch: list[dict], pair: np.ndarray, gt: GroundTruth
) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's mask IoUs with its pair's ground truth (pycocotools, as lvis-api; no
    crowd), one pycocotools call per pair; the IoUs flat and where each detection's start."""
    first, count = gt.instances(pair)
    iou_start = np.cumsum(count) - count
    iou = np.zeros(int(count.sum()))
    needed = np.flatnonzero(count)
    by_pair = needed[np.argsort(pair[needed], kind="stable")]
    for dts in np.split(by_pair, np.flatnonzero(_starts(pair[by_pair]))[1:]) if len(needed) else []:
        start, n = first[dts[0]], count[dts[0]]
        gts = [_rle(*gt.masks[k]) for k in range(start, start + n)]
        masks = [batch[i]["segmentation"] for i in dts]
        try:
            rows = mask_utils.iou(masks, gts, [0] * n)
        except Exception as error:  # pycocotools raises plain Exceptions on bad masks
            raise UserError(
                f"a detection's segmentation is not a mask in RLE ({error}), as LVIS results "
                "hold them: {'size': [height, width], 'counts': ...}"
            ) from None
        iou[_ranges(iou_start[dts], count[dts])] = np.asarray(rows).ravel()
    return iou, iou_start


def _concatenate(parts: list[Detections]) -> Detections:
    """The detections of consecutive batches as one (a file gives at least one batch)."""
    joined = Detections(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("pair", "image", "score"))
    )
    if parts[0].box is not None:
        joined.box = np.concatenate([p.box for p in parts])
    if parts[0].iou is not None:
        offsets = np.cumsum([0] + [len(p.iou) for p in parts[:-1]])
        joined.iou = np.concatenate([p.iou for p in parts])
        joined.iou_start = np.concatenate(
            [p.iou_start + o for p, o in zip(parts, offsets, strict=True)]
        )
    return joined


def read_detection_file(path: Path, gt: GroundTruth, iou_type: str, workers: int) -> Detections:
    """read_detections over a detection file, a block at a time, in `workers` processes
    (forked: they share `gt`; 0: one per CPU this process may use). Where a block does not
    parse (a "}, {" inside a string, or broken JSON) the file is read again in one process,
    which finds the true cut or names the error."""
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1:
        context = multiprocessing.get_context("fork")
        with context.Pool(workers, _share, (gt, iou_type)) as pool:
            parts = list(pool.imap(_read_block, _json_list_blocks(path)))
        if all(part is not None for part in parts):
            return _concatenate(parts)
    return _concatenate([read_detections(b, gt, iou_type) for b in json_list_items(path)])


_shared: tuple = ()  # (ground truth, IoU type) of a worker process


def _share(gt: GroundTruth, iou_type: str) -> None:
    global _shared
    _shared = (gt, iou_type)


def _read_block(block: bytes) -> Detections | None:
    """read_detections of one block of the file; None where it does not parse."""
    try:
        return read_detections(orjson.loads(block), *_shared)
    except orjson.JSONDecodeError:
        return None


def evaluated_order(dets: Detections, gt: GroundTruth) -> np.ndarray:
    """Indices of the detections LVIS evaluates, sorted by pair, then score (descending), then
    file order: the 300 best of each image (ties: file order), of verified categories."""
    by_image = np.lexsort((np.arange(len(dets.score)), -dets.score, dets.image))
    position = np.arange(len(by_image))
    rank = position - np.maximum.accumulate(np.where(_starts(dets.image[by_image]), position, 0))
    kept = by_image[rank < MAX_DETS_PER_IMAGE]
    kept = kept[_is_in(dets.pair[kept], gt.verified)]
    return kept[np.lexsort((kept, -dets.score[kept], dets.pair[kept]))]


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    """True where a run of equal keys begins."""
    return np.diff(sorted_keys, prepend=sorted_keys[:1] - 1) != 0


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + length) for each start and length."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - ends + lengths, lengths)


def _pow2(n: np.ndarray) -> np.ndarray:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << np.ceil(np.log2(n)).astype(np.int64)


def _box_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of paired [x, y, w, h] rows, computed as pycocotools computes it."""
    w = np.minimum(dt[:, 0] + dt[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 1] + dt[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(dt[:, 1], gt[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    return inter / (dt[:, 2] * dt[:, 3] + gt[:, 2] * gt[:, 3] - inter)


def match(
    iou: np.ndarray, n_dt: np.ndarray, n_gt: np.ndarray, gt_ignored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """lvis-api's greedy matching at each IoU threshold, for pairs of n_dt[p] detections
    (by descending score) and n_gt[p] ground truths. `iou` and `gt_ignored` hold one entry per
    (pair, detection, ground truth), in that order. Returns, per threshold and (pair,
    detection) [T, sum(n_dt)]: matched, and matched to ignored ground truth.

    Pairs go in buckets of similar size (powers of two), all of a bucket at once, one
    detection rank at a time."""
    sizes = n_dt * n_gt
    entry_start, dt_start = np.cumsum(sizes) - sizes, np.cumsum(n_dt) - n_dt
    matched = np.zeros((len(IOU_THRESHOLDS), int(n_dt.sum())), bool)
    to_ignored = np.zeros_like(matched)
    threshold = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None, None]
    dt_pads, gt_pads = _pow2(n_dt), _pow2(n_gt)
    for dt_pad, gt_pad in np.unique(np.stack([dt_pads, gt_pads], 1), axis=0):
        members = np.flatnonzero((dt_pads == dt_pad) & (gt_pads == gt_pad))
        per_piece = max(1, BUCKET_CELLS // int(dt_pad * gt_pad))
        for piece in np.array_split(members, -(-len(members) // per_piece)):
            entries = _ranges(entry_start[piece], sizes[piece])
            pair = np.repeat(np.arange(len(piece)), sizes[piece])
            within = entries - np.repeat(entry_start[piece], sizes[piece])
            d, g = np.divmod(within, np.repeat(n_gt[piece], sizes[piece]))
            cells = np.full((len(piece), dt_pad, gt_pad), -1.0)
            cells[pair, d, g] = iou[entries]
            ignored = np.zeros((len(piece), gt_pad), bool)
            ignored[pair, g] = gt_ignored[entries]
            taken = np.zeros((len(IOU_THRESHOLDS), len(piece), gt_pad), bool)
            hits = np.zeros((len(IOU_THRESHOLDS), len(piece), dt_pad), bool)
            hits_ignored = np.zeros_like(hits)
            for rank in range(int(n_dt[piece].max())):
                row = cells[None, :, rank, :]
                free = (row >= threshold) & ~taken
                regular = free & ~ignored
                free = np.where(regular.any(-1, keepdims=True), regular, free)
                # the highest IoU, the last one on ties (lvis-api's `<` comparison)
                best = gt_pad - 1 - np.argmax(np.where(free, row, -1.0)[..., ::-1], axis=-1)
                hits[:, :, rank] = hit = free.any(-1)
                t, p = np.nonzero(hit)
                taken[t, p, best[t, p]] = True
                hits_ignored[t, p, rank] = ignored[p, best[t, p]]
            real = np.arange(dt_pad)[None, :] < n_dt[piece][:, None]
            position = (dt_start[piece][:, None] + np.arange(dt_pad)[None, :])[real]
            matched[:, position] = hits[:, real]
            to_ignored[:, position] = hits_ignored[:, real]
    return matched, to_ignored


def _precision_at_recall(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> np.ndarray:
    """lvis-api's precision at the 101 recall points [T, R] from cumulative TP and FP [T, N]:
    each precision replaced by the highest to its right, 0 beyond the highest recall."""
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((len(tp), len(RECALL_POINTS)))
    for t in range(len(tp)):
        index = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        reached = index < tp.shape[1]
        out[t, reached] = precision[t, index[reached]]
    return out


def precision_per_category(
    gt: GroundTruth, dets: Detections, order: np.ndarray, iou_type: str
) -> np.ndarray:
    """lvis-api's precision [T, R, categories] (area range "all"; -1 where a category has no
    ground truth) of the detections dets[order] (see evaluated_order)."""
    categories = len(gt.category_ids)
    pair = dets.pair[order]
    dt_keys, dt_start, dt_count = np.unique(pair, return_index=True, return_counts=True)
    gt_start, gt_count = gt.instances(dt_keys)
    with_gt = gt_count > 0
    n_dt, n_gt, dt_start = dt_count[with_gt], gt_count[with_gt], dt_start[with_gt]
    sizes = n_dt * n_gt
    entries = _ranges(np.zeros_like(sizes), sizes)
    d, g = np.divmod(entries, np.repeat(n_gt, sizes))
    gt_index = np.repeat(gt_start[with_gt], sizes) + g
    in_pairs = _ranges(dt_start, n_dt)  # where in `order` the pairs' detections are
    if iou_type == "bbox":
        iou = _box_iou(dets.box[order[np.repeat(dt_start, sizes) + d]], gt.box[gt_index])
    else:
        iou = dets.iou[_ranges(dets.iou_start[order[in_pairs]], np.repeat(n_gt, n_dt))]
    del entries, d
    found, found_ignored = match(iou, n_dt, n_gt, gt.ignored[gt_index])
    matched = np.zeros((len(IOU_THRESHOLDS), len(order)), bool)
    matched[:, in_pairs] = found
    ignored = np.zeros_like(matched)
    ignored[:, in_pairs] = found_ignored
    ignored |= ~matched & _is_in(pair, gt.not_exhaustive)[None, :]
    tp, fp = matched & ~ignored, ~matched & ~ignored
    category = pair % categories
    # lvis-api's order within a category: score, then image, then rank in the image
    by_category = np.lexsort((np.arange(len(order)), -dets.score[order], category))
    bounds = np.searchsorted(category[by_category], np.arange(categories + 1))
    num_gt = np.bincount(gt.pair % categories, weights=~gt.ignored, minlength=categories)
    precision = np.full((len(IOU_THRESHOLDS), len(RECALL_POINTS), categories), -1.0)
    for k in np.flatnonzero(num_gt > 0):
        mine = by_category[bounds[k] : bounds[k + 1]]
        precision[:, :, k] = _precision_at_recall(
            np.cumsum(tp[:, mine], axis=1, dtype=np.float64),
            np.cumsum(fp[:, mine], axis=1, dtype=np.float64),
            int(num_gt[k]),
        )
    return precision


def evaluate(
    ann_file: Path, detections: list[dict] | Path, iou_type: str = "segm", workers: int = 1
) -> dict:
    """AP, AP_r, AP_c, AP_f (fractions in [0, 1]) and per-category AP (-1: no ground truth)
    of LVIS-format detections, a list or a JSON file (read in `workers` processes, 0: one per
    CPU); `iou_type` "segm" or "bbox"."""
    if iou_type not in ("segm", "bbox"):
        raise UserError(f"unknown IoU type {iou_type!r}: use segm or bbox")
    with _cycle_collector_paused():
        gt = load_ground_truth(ann_file, iou_type)
        if isinstance(detections, list):
            dets = read_detections(detections, gt, iou_type)
        elif not Path(detections).is_file():
            raise UserError(f"the detection file {detections} does not exist or is a folder")
        else:
            dets = read_detection_file(Path(detections), gt, iou_type, workers)
    precision = precision_per_category(gt, dets, evaluated_order(dets, gt), iou_type)
    metrics = {"AP": _mean_valid(precision)}
    for group, name in FREQUENCY_GROUPS.items():
        metrics[name] = _mean_valid(precision[:, :, gt.frequency == group])
    metrics["per_category"] = {
        int(c): _mean_valid(precision[:, :, k]) for k, c in enumerate(gt.category_ids)
    }
    return metrics


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Parsing creates millions of objects without cycles, and Python's cycle collector would
    walk them all again and again (measured: parsing 2.3x slower with it)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _mean_valid(precision: np.ndarray) -> float:
    """lvis-api's reduction: the mean of the entries that are not -1 (-1: no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0
