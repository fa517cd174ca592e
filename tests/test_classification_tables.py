"""`seesaw repro table10` and `table11` on the tiny preset, as a user runs them: every row
trains (or is fitted) and evaluates, the report carries the runs' numbers, and the row the
two tables share is one run. Bad data roots of the paper preset are one clear line."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def _seesaw(*args, cwd, timeout=120):
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.mark.parametrize(
    ("root", "message"),
    [(None, "needs --data-root"), ("empty", "has no ImageNet_LT_train.txt")],
)
def test_paper_preset_without_imagenet_lt_is_one_line_and_exit_2(tmp_path, root, message):
    args = ["repro", "table10", "--preset", "paper", "--work-dir", "w"]
    if root:
        (tmp_path / root).mkdir()
        args += ["--data-root", root]
    result = _seesaw(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_tables_10_and_11_run_every_row_on_the_tiny_preset(tmp_path):
    result = _seesaw("repro", "table10", "--work-dir", "w", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result = _seesaw("repro", "table11", "--work-dir", "w", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = _seesaw("report", "all", "--format", "csv", "--work-dir", "w", cwd=tmp_path)
    frame = pd.read_csv(io.StringIO(report.stdout), keep_default_na=False)
    for name, rows in (("table10", 10), ("table11", 5)):
        mine = frame[frame.table == name]
        assert len(mine) == rows and set(mine.state) == {"done"}, mine[["row", "state"]]
        for record in mine.to_dict("records"):
            metrics = json.loads(
                (tmp_path / "w" / "runs" / record["run_id"] / "metrics.json").read_text()
            )
            assert metrics["split"] == "test"
            for metric in ("top1", "many", "medium", "few"):
                assert float(record[f"{metric}_repro"]) == metrics["metrics"][metric]
                assert 0 <= metrics["metrics"][metric] <= 100
    seesaw = frame[(frame.table == "table10") & (frame.row == "seesaw")].run_id.item()
    assert frame[(frame.table == "table11") & (frame.row == "q1.0")].run_id.item() == seesaw
    assert len(list((tmp_path / "w" / "runs").iterdir())) == 14
