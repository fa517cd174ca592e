"""Every run folder of a work dir as one tidy pandas DataFrame: one row per run, table row
and metric."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from seesaw_repro.execution import provenance
from seesaw_repro.execution.runs import RunDir
from seesaw_repro.files import write_text_atomic

COLUMNS = [
    "run_id",  # the run id is the hash of the resolved config (configs.run_id)
    "preset",
    "table",
    "row",
    "seed",  # mmengine's randomness seed of the run (RunSpec.seed)
    "metric",
    "value",
    "split",
    "status",
    "suite_version",
    "environment",  # what the attempt that finished the run ran on (provenance.summary)
    "commit",  # the suite's git commit then, "+dirty" when tracked files differed from it
    "host",
]


def collect(work_dir: Path) -> pd.DataFrame:
    """One row per (run, table row it stands for, metric); a run without metrics yet has
    one row per table row with no metric, so its status shows. Archived folders
    (<run id>.old-<time>) are left out."""
    records = []
    runs_dir = Path(work_dir) / "runs"
    folders = sorted(runs_dir.iterdir()) if runs_dir.exists() else []
    for folder in (f for f in folders if ".old-" not in f.name and f.is_dir()):
        run_dir = RunDir(Path(work_dir), folder.name)
        info = run_dir.info()
        if info is None:
            continue
        state = run_dir.status()["state"]
        last = (run_dir.environments() or [{}])[-1]  # {} (None in each column) before a job ran
        commit = last.get("commit") and last["commit"] + ("+dirty" if last.get("dirty") else "")
        done = run_dir.result() or {}
        metrics = done.get("metrics") or {None: float("nan")}
        for label in info["rows"]:
            table, _, row = label.partition(":")
            for metric, value in metrics.items():
                records.append(
                    {
                        "run_id": info["run_id"],
                        "preset": info["preset"],
                        "table": table,
                        "row": row,
                        "seed": info["spec"].get("seed", 0),
                        "metric": metric,
                        "value": value,
                        "split": done.get("split", info["spec"].get("split", "val")),
                        "status": state,
                        "suite_version": info.get("suite_version", ""),
                        "environment": provenance.summary(last) if last else None,
                        "commit": commit,
                        "host": last.get("host"),
                    }
                )
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def save(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Write `out`.csv and `out`.parquet, each atomically."""
    out = Path(out)
    csv, parquet = out.with_suffix(".csv"), out.with_suffix(".parquet")
    write_text_atomic(csv, frame.to_csv(index=False))
    tmp = parquet.with_name(f".{parquet.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, parquet)
    return [csv, parquet]
