"""`seesaw doctor` on this machine: the checklist, and each failure with its fix and exit 2."""

import os
import subprocess
import sys
from pathlib import Path

from seesaw_repro import doctor


def _doctor(*args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "seesaw"
    env = {**os.environ, "COLUMNS": "250", **({"PATH": path} if path else {})}
    return subprocess.run(
        [str(script), "doctor", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def _row(output: str, check: str) -> str:
    """The checklist's line of `check` (its first cell is exactly that name)."""
    cells = [(line, line.split("│")) for line in output.splitlines()]
    return next(line for line, cell in cells if len(cell) > 2 and cell[1].strip() == check)


def test_this_machine_passes_for_the_tiny_table2(tmp_path):
    result = _doctor("table2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in _row(result.stdout, "mmcv compiled ops") and "run on cpu" in result.stdout
    for name, tested in doctor.tested_versions().items():
        assert tested in _row(result.stdout, name)
    assert "generated under seesaw-work" in _row(result.stdout, "data root")
    assert not (tmp_path / "seesaw-work").exists()  # the doctor generates nothing


def test_a_broken_data_root_and_missing_gpus_fail_with_their_fixes(tmp_path):
    result = _doctor("table2", "--data-root", "nope", "--gpus", "1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    data = _row(result.stdout, "data root")
    assert "fail" in data and "does not exist" in data and "seesaw data synth" in data
    gpus = _row(result.stdout, "torch and GPUs")
    assert "fail" in gpus and "--gpus 1 asks for more" in gpus and "CUDA build" in gpus
    assert result.stderr.strip() == "2 check(s) fail: torch and GPUs, data root"


def test_slurm_missing_from_path_fails_with_its_fix(tmp_path):
    no_slurm = str(Path(sys.executable).parent)
    result = _doctor("--executor", "slurm", cwd=tmp_path, path=no_slurm)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    slurm = _row(result.stdout, "Slurm")
    assert "fail" in slurm and "not found on PATH" in slurm and "login node" in slurm


def test_a_work_dir_without_room_for_the_checkpoints_fails_with_its_fix(tmp_path, small_disk):
    disk = small_disk(1 << 20)  # 1 MiB: the tiny table 2's checkpoints take ~100 MiB
    result = _doctor("table2", "--work-dir", str(disk), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    row = _row(result.stdout, "free disk")
    assert "fail" in row and "the checkpoints the 6 run(s) still to train keep" in row
    assert "or give another --work-dir" in row
