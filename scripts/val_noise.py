"""How much of a tiny table's seed-to-seed spread is its small val split, and what do LVIS's
detection limits do to its effects (issue 18)?

Evaluates the finished tiny runs of a table, at every seed in the work dir, on a larger val
split of the same generated dataset (the train split is identical: synth renders it first,
from the same random stream), and prints per row and metric the mean ± sd over seeds and the
paired effect against the table's baseline row with its 95% interval, on the preset's val
(the runs' own metrics.json) and on the larger one.

    .venv/bin/python scripts/val_noise.py table2 --work-dir W [--val-images 400]
        [--max-per-img 100] [--score-thr 1e-3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from seesaw_repro import mmdet_plugin  # noqa: F401 (registers)
from seesaw_repro.data import synth
from seesaw_repro.execution import runs
from seesaw_repro.execution.runs import RunDir
from seesaw_repro.paper import presets, recipes
from seesaw_repro.reporting.verdicts import paired_effect
from seesaw_repro.training.hooks import LVIS_METRICS

METRICS = {column: key for key, column in LVIS_METRICS.items() if column in ("AP", "AP_r", "AP_f")}


def evaluate(
    run_dir: RunDir, data_root: Path, val_root: Path, out: Path, test_cfg: dict
) -> dict[str, float]:
    """The run's final model on `val_root`'s val split, its test_cfg.rcnn updated with
    `test_cfg` (cached in `out`)."""
    if out.exists():
        return json.loads(out.read_text())
    text = run_dir.config_file.read_text().replace(str(data_root.resolve()), str(val_root))
    cfg = Config.fromstring(text, ".py")
    cfg.work_dir = str(out.parent / f"work-{run_dir.run_id}")
    cfg.load_from = str(run_dir.path / f"iter_{cfg.train_cfg.max_iters}.pth")
    cfg.resume, cfg.custom_hooks, cfg.log_level = False, [], "WARNING"
    cfg.test_dataloader, cfg.test_evaluator = cfg.val_dataloader, cfg.val_evaluator
    cfg.test_cfg = {"type": "TestLoop"}
    cfg.model.test_cfg.rcnn.update(test_cfg)
    found = Runner.from_cfg(cfg).test()
    metrics = {name: 100 * found[key] for name, key in METRICS.items()}
    out.write_text(json.dumps(metrics))
    return metrics


def main() -> None:
    """Print the table's rows on both val splits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--val-images", type=int, default=400)
    parser.add_argument("--max-per-img", type=int, default=100, help="detections per image")
    parser.add_argument("--score-thr", type=float, default=1e-3, help="score threshold")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = recipes.load_table(args.table)
    seeds = runs.seeds_in(args.work_dir)
    data_root = presets.TINY.default_data_root(args.work_dir)
    spec = dataclasses.replace(presets.TINY.synth, num_val_images=args.val_images)
    val_root = (args.work_dir / "val-noise" / f"val{args.val_images}").resolve()
    synth.ensure(val_root, spec)
    values: dict[str, dict[str, dict[int, dict[str, float]]]] = {"preset": {}, "larger": {}}
    for run in runs.plan(table, "tiny", seeds):
        run_dir = RunDir(args.work_dir, run.run_id)
        if not run_dir.is_done():
            continue
        own = json.loads((run_dir.path / "metrics.json").read_text())["metrics"]
        test_cfg = {"max_per_img": args.max_per_img, "score_thr": args.score_thr}
        variant = f"{run.run_id}-max{args.max_per_img}-thr{args.score_thr:g}.json"
        larger = evaluate(run_dir, data_root, val_root, val_root / variant, test_cfg)
        for row in run.rows:
            key = row.split(":", 1)[1]
            values["preset"].setdefault(key, {})[run.spec.seed] = own
            values["larger"].setdefault(key, {})[run.spec.seed] = larger
    baselines = {row.key: row.baseline for row in table.rows}
    for split, by_row in values.items():
        size = presets.TINY.synth.num_val_images if split == "preset" else args.val_images
        tested = "" if split == "preset" else f", {args.max_per_img} detections, {args.score_thr:g}"
        print(f"== val split of {size} images{tested}")
        for metric in METRICS:
            for row, by_seed in by_row.items():
                got = [by_seed[s][metric] for s in sorted(by_seed)]
                line = f"{metric:5} {row:12} {np.mean(got):5.1f} ± {np.std(got, ddof=1):4.1f}"
                base = baselines.get(row)
                if base in by_row:
                    effect = paired_effect(
                        {s: v[metric] for s, v in by_seed.items()},
                        {s: v[metric] for s, v in by_row[base].items()},
                    )
                    line += f"   vs {base}: {effect.text()}"
                print(line)


if __name__ == "__main__":
    main()
