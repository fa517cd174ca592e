"""What a run ran on: the software and hardware behind its numbers. The job records it at
each attempt in the run folder (run_folder.ENVIRONMENT_FILE); it is not part of the run id,
so the same config trained elsewhere is the same run, and the report says when a table's
rows ran in different environments."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "mmcv", "mmdet", "mmengine")
SUITE_SOURCE = Path(__file__).resolve().parents[2]  # seesaw_repro/execution/provenance.py


def environment(gpus: int) -> dict:
    """This process's environment, for a job on `gpus` GPUs per node (0: CPU)."""
    import torch

    record: dict = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            record[name] = version(name)
        except PackageNotFoundError:
            record[name] = None
    on_gpu = gpus > 0 and torch.cuda.is_available()
    record["cuda"] = torch.version.cuda if on_gpu else None
    record["cudnn"] = torch.backends.cudnn.version() if on_gpu else None
    record["device"] = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    record["processes"] = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    record["commit"], record["dirty"] = _git_state(SUITE_SOURCE)
    record["host"] = socket.gethostname()
    record["started"] = time.time()
    return record


def _git_state(source: Path) -> tuple[str | None, bool | None]:
    """The suite's commit and whether tracked files differ from it; (None, None) when the
    suite is not a git checkout (installed from a wheel) or git is missing."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changes.strip())


def summary(record: dict) -> str:
    """The compared part of an environment in one line, e.g. 'Python 3.11.9, torch 2.13.0,
    mmcv 2.1.0, mmdet 3.3.0, mmengine 0.10.7, CPU'."""
    parts = [f"Python {record.get('python')}"]
    parts += [f"{name} {record.get(name)}" for name in PACKAGES]
    if record.get("cuda"):
        parts.append(f"CUDA {record['cuda']}, cuDNN {record.get('cudnn')}")
    parts.append(str(record.get("device")))
    return ", ".join(parts)
