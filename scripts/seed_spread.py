"""Table 10's CE and Seesaw rows at several seeds: does Seesaw's few-shot gain over CE hold
beyond one seed? Trains the runs that are not done yet (local executor), then prints each
seed's top-1 and few-shot accuracy and their mean and standard deviation.

    .venv/bin/python scripts/seed_spread.py [--preset tiny] [--seeds 0 1 2] [--work-dir D]
"""

import argparse
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from seesaw_repro import configs, executors, recipes, runs

ROWS = ("ce", "seesaw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=Path("work"))
    args = parser.parse_args()
    table = recipes.load_table("table10")
    chosen = [row for row in table.rows if row.key in ROWS]
    seeded = [
        recipes.Row(f"{row.key}@{seed}", replace(row.spec, seed=seed))
        for seed in args.seeds
        for row in chosen
    ]
    planned = runs.plan(replace(table, rows=seeded), args.preset)
    scale = configs.preset_for(table.task, args.preset)
    root = scale.prepare_data(None, args.work_dir)
    console = Console()
    executors.run_local(planned, args.work_dir, root, os.cpu_count() or 1, console)
    found = {}
    for row in seeded:
        run_dir = runs.RunDir(args.work_dir, configs.run_id(configs.resolve(row.spec, args.preset)))
        found[row.key] = run_dir.metrics() or {}
    for key in ROWS:
        for metric in ("top1", "few"):
            values = np.array([found[f"{key}@{s}"].get(metric, np.nan) for s in args.seeds])
            per_seed = " ".join(f"{v:5.1f}" for v in values)
            console.print(
                f"{key:7} {metric:5} seeds {per_seed}  mean {values.mean():5.1f} "
                f"std {values.std(ddof=1):4.1f}"
            )


if __name__ == "__main__":
    main()
