"""Our LVIS evaluation (seesaw_repro.lvis_eval) against lvis-api's LVISEval on the same
generated LVIS-format case, bbox and segm: time, peak memory and the largest AP difference.

    .venv/bin/python benchmarks/lvis_eval_speed.py [--images 500] [--only ours] [--case-dir D]

The case: 1203 categories with LVIS v1's frequency split, rectangular instances given as
polygons, LVIS's federated fields (neg_category_ids, not_exhaustive_category_ids), and 300
detections per image (jittered copies of the instances and false positives). Each evaluator
runs in its own process, so its peak memory (VmHWM) is its own; each process is timed as a
whole too, and so is the `seesaw eval` command (the median of 3 runs), against lvis-api's
whole process. Ours reads the detection file in one process per CPU it may use, as `seesaw
eval` does; lvis-api uses one. LVIS v1 val has 19,809 images; --only ours evaluates that
scale without waiting hours for lvis-api.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

NUM_CATEGORIES = 1203
FREQUENCIES = {"r": 337, "c": 461, "f": 405}  # LVIS v1's rare / common / frequent counts
WIDTH, HEIGHT = 640, 480


def _polygon(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def build_case(images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground truth and detections of an LVIS-sized evaluation case."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(list(FREQUENCIES), list(FREQUENCIES.values()))
    weights = np.where(groups == "f", 50.0, np.where(groups == "c", 5.0, 0.5))
    weights /= weights.sum()
    categories = [
        {"id": i + 1, "name": f"c{i + 1}", "frequency": str(groups[i]), "image_count": 1}
        for i in range(NUM_CATEGORIES)
    ]
    gt_images, annotations, detections = [], [], []
    for image_id in range(1, images + 1):
        present = rng.choice(NUM_CATEGORIES, size=rng.integers(1, 8), replace=False, p=weights)
        absent = rng.choice(NUM_CATEGORIES, size=10, replace=False)
        absent = [int(c) + 1 for c in absent if c not in present]
        exhaustive_not = [int(c) + 1 for c in present if rng.random() < 0.2]
        gt_images.append(
            {
                "id": image_id,
                "width": WIDTH,
                "height": HEIGHT,
                "neg_category_ids": absent,
                "not_exhaustive_category_ids": exhaustive_not,
            }
        )
        boxes = []
        for category in present:
            for _ in range(rng.integers(1, 4)):
                w, h = rng.uniform(16, 200, size=2)
                x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
                box = [float(x), float(y), float(w), float(h)]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(category) + 1,
                        "bbox": box,
                        "area": float(w * h),
                        "segmentation": [_polygon(box)],
                    }
                )
                boxes.append((int(category) + 1, box))
        for k in range(300):
            if k < 200 and boxes:  # a jittered instance, sometimes with the wrong category
                category, (x, y, w, h) = boxes[k % len(boxes)]
                x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
                w, h = w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)
                if rng.random() < 0.3:
                    category = int(rng.integers(1, NUM_CATEGORIES + 1))
            else:  # a false positive anywhere
                category = int(rng.integers(1, NUM_CATEGORIES + 1))
                w, h = rng.uniform(16, 200, size=2)
                x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            box = [float(max(x, 0)), float(max(y, 0)), float(w), float(h)]
            rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(box)], HEIGHT, WIDTH))
            rle["counts"] = rle["counts"].decode()
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "score": float(rng.random()),
                    "segmentation": rle,
                }
            )
    for category in categories:
        category["image_count"] = len(
            {a["image_id"] for a in annotations if a["category_id"] == category["id"]}
        )
    gt = {"images": gt_images, "annotations": annotations, "categories": categories}
    return gt, detections


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Not ru_maxrss: Linux carries the parent's
    resident size at fork into the child's ru_maxrss, which made every evaluator seem to
    need as much memory as the process that built the case."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def evaluate_in_process(which: str, ann: str, dets: str, iou_type: str) -> None:
    """Evaluate with one evaluator; print JSON: seconds, peak MB, AP, AP_r, AP_c, AP_f."""
    if which == "ours":
        from seesaw_repro.evaluation.lvis_eval import evaluate

        start = time.perf_counter()
        result = evaluate(Path(ann), Path(dets), iou_type, workers=0)  # as `seesaw eval`
        metrics = {k: result[k] for k in ("AP", "AP_r", "AP_c", "AP_f")}
    else:
        from lvis import LVIS, LVISEval, LVISResults

        from seesaw_repro import compat

        compat.apply()  # lvis 0.5.3 needs numpy's removed np.float
        start = time.perf_counter()
        gt = LVIS(ann)
        evaluator = LVISEval(gt, LVISResults(gt, dets, max_dets=300), iou_type)
        evaluator.run()
        results = evaluator.get_results()
        metrics = {
            "AP": results["AP"],
            "AP_r": results["APr"],
            "AP_c": results["APc"],
            "AP_f": results["APf"],
        }
    seconds = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, **metrics}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--only", choices=["ours", "lvis-api"], default=None)
    parser.add_argument(
        "--case-dir", type=Path, default=None, help="keep the generated case here and reuse it"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        evaluate_in_process(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.case_dir or Path(tmp)
        ann, dets = folder / f"gt-{args.images}.json", folder / f"dets-{args.images}.json"
        if not dets.exists():
            started = time.perf_counter()
            gt, detections = build_case(args.images)
            folder.mkdir(parents=True, exist_ok=True)
            ann.write_text(json.dumps(gt))
            dets.write_text(json.dumps(detections))
            print(f"case built in {time.perf_counter() - started:.0f} s")
            del gt, detections  # the evaluators run in their own processes
        print(
            f"ours reads the detection file in {len(os.sched_getaffinity(0))} processes; "
            f"case: {args.images} images, {len(json.loads(ann.read_text())['annotations'])} "
            f"instances, {args.images * 300} detections, {NUM_CATEGORIES} categories"
        )
        evaluators = [args.only] if args.only else ["lvis-api", "ours"]
        for iou_type in ("bbox", "segm"):
            found = {}
            for which in evaluators:
                command = [sys.executable, __file__, "--child", which, str(ann), str(dets)]
                started = time.perf_counter()
                out = subprocess.run(
                    [*command, iou_type], capture_output=True, text=True, check=True
                )
                found[which] = json.loads(out.stdout.strip().splitlines()[-1])
                found[which]["process_seconds"] = time.perf_counter() - started
                r = found[which]
                print(
                    f"{iou_type:4} {which:8} {r['seconds']:8.1f} s  peak {r['peak_mb']:7.0f} MB  "
                    f"AP {r['AP']:.4f} AP_r {r['AP_r']:.4f} AP_c {r['AP_c']:.4f} "
                    f"AP_f {r['AP_f']:.4f}  (whole process {r['process_seconds']:.1f} s)"
                )
            if "ours" in found:
                tries = seesaw_eval(ann, dets, iou_type)
                found["seesaw eval"] = float(np.median(tries))
                print(
                    f"{iou_type:4} `seesaw eval`, whole process: {found['seesaw eval']:.1f} s "
                    f"(median of {', '.join(f'{t:.1f}' for t in tries)})"
                )
            if len(evaluators) == 2:
                ours, ref = found["ours"], found["lvis-api"]
                diff = max(abs(ours[k] - ref[k]) for k in ("AP", "AP_r", "AP_c", "AP_f"))
                print(
                    f"{iou_type:4} ours is {ref['seconds'] / ours['seconds']:.1f}x faster, "
                    f"{ref['peak_mb'] / ours['peak_mb']:.1f}x less memory; "
                    f"largest AP difference {diff:.2e}; as whole processes, `seesaw eval` is "
                    f"{ref['process_seconds'] / found['seesaw eval']:.1f}x faster than "
                    "lvis-api's (Python start, imports, reading the files, evaluating)"
                )


def seesaw_eval(ann: Path, dets: Path, iou_type: str, tries: int = 3) -> list[float]:
    """Wall seconds of the `seesaw eval` command as a user runs it, start to exit, `tries`
    times: one try of ~2 s moved by up to 20 % with the host's load."""
    command = [str(Path(sys.executable).parent / "seesaw"), "eval", str(dets), "--ann", str(ann)]
    seconds = []
    for _ in range(tries):
        started = time.perf_counter()
        subprocess.run([*command, "--iou", iou_type], capture_output=True, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds


if __name__ == "__main__":
    main()
