"""`seesaw doctor`: what would stop a table's runs here, found in seconds rather than after
hours in a queue. Each check says what it found and, when it fails, the fix."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from .errors import UserError

# setup.sh installs these two (torch the user's build, mmcv compiled against it); the rest
# are pinned in pyproject.toml and read from the installed package's requirements.
SETUP_PINS = {"torch": "2.13.0", "mmcv": "2.1.0"}
OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    """One line of the checklist: its name, ok / warn / fail, what was found, the fix."""

    name: str
    state: str
    found: str
    fix: str = ""


def checks(
    table: str | None,
    preset: str,
    data_root: Path | None,
    work_dir: Path,
    executor: str,
    gpus: int,
    partition: str | None = None,
    profile: Path | None = None,
) -> list[Check]:
    """The checklist for training `table` (None: no table-specific checks) on this machine."""
    found = [_torch(gpus), _mmcv_ops(gpus), *_versions()]
    if gpus > 1:
        found.append(_nccl())
    if table is not None:
        found += _table(table, preset, data_root, work_dir)
    if executor == "slurm":
        found.append(_slurm(profile, partition, gpus))
    return found


def _torch(gpus: int) -> Check:
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    names = [
        f"{torch.cuda.get_device_name(i)} "
        f"({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
        for i in range(seen)
    ]
    found = f"torch {torch.__version__} ({build} build); GPUs seen: {', '.join(names) or 'none'}"
    if gpus > seen:
        fix = (
            "install a CUDA build of torch (setup.sh with VENV=none in a CUDA environment), "
            "check CUDA_VISIBLE_DEVICES, or ask for fewer --gpus"
        )
        return Check("torch and GPUs", FAIL, f"{found}; --gpus {gpus} asks for more", fix)
    return Check("torch and GPUs", OK, found)


def _mmcv_ops(gpus: int) -> Check:
    """A RoIAlign and an NMS call, on the GPU when the runs use one: mmcv's compiled ops."""
    fix = (
        "reinstall mmcv 2.1.0 compiled against this torch: ./setup.sh (README, 'On a GPU cluster')"
    )
    try:
        import torch
        from mmcv.ops import nms, roi_align

        device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        features = torch.arange(64.0, device=device).reshape(1, 1, 8, 8)
        rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]], device=device)
        pooled = roi_align(features, rois, (2, 2), 1.0, 2, "avg", True)
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.1]], device=device)
        _, kept = nms(boxes, torch.tensor([0.9, 0.8], device=device), 0.5)
    except Exception as err:  # an ImportError, or a kernel missing for this device
        return Check("mmcv compiled ops", FAIL, f"{type(err).__name__}: {err}"[:300], fix)
    if pooled.shape != (1, 1, 2, 2) or kept.tolist() != [0]:
        return Check("mmcv compiled ops", FAIL, "RoIAlign or NMS gave a wrong answer", fix)
    return Check("mmcv compiled ops", OK, f"RoIAlign and NMS run on {device}")


def _nccl() -> Check:
    import torch.distributed as dist

    if dist.is_available() and dist.is_nccl_available():
        return Check("NCCL", OK, "torch.distributed has NCCL (several GPUs per run)")
    return Check(
        "NCCL", FAIL, "torch.distributed has no NCCL", "install a CUDA build of torch with NCCL"
    )


def tested_versions() -> dict[str, str]:
    """The versions the suite is tested with: setup.sh's and pyproject.toml's pins."""
    pins = dict(SETUP_PINS)
    for line in requires("seesaw-repro") or []:
        pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", line.strip())
        if pinned:
            pins[pinned[1]] = pinned[2]
    return pins


def _versions() -> list[Check]:
    found = []
    for name, tested in tested_versions().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            found.append(Check(name, FAIL, "not installed", "run ./setup.sh"))
            continue
        if installed.split("+")[0] == tested:
            found.append(Check(name, OK, installed))
        else:
            differs = f"{installed}; the suite is tested with {tested}"
            fix = f"numbers may differ: pip install {name}=={tested}"
            found.append(Check(name, WARN, differs, fix))
    return found


def _table(table: str, preset: str, data_root: Path | None, work_dir: Path) -> list[Check]:
    from . import configs, pretrained, recipes, runs

    spec_table = recipes.load_table(table)
    planned = runs.plan(spec_table, preset)
    found = [Check("recipe", OK, f"{table}: {len(spec_table.rows)} rows, {len(planned)} runs")]
    task = spec_table.task
    if data_root is None and preset == "tiny":
        found.append(Check("data root", OK, f"generated under {work_dir} by the first repro"))
    else:
        try:
            root = configs.prepare_data(
                task, preset, data_root, work_dir, [r.spec for r in planned]
            )
            found.append(Check("data root", OK, f"{root} holds what {table} needs"))
        except UserError as err:
            found.append(Check("data root", FAIL, str(err), "see the message; README, 'Presets'"))
    names = pretrained.names_in([run.config for run in planned])
    absent = pretrained.missing(names)
    if absent:
        fix = f"seesaw weights fetch {table} --preset {preset} (on a machine with internet)"
        found.append(Check("pretrained backbones", FAIL, f"missing: {', '.join(absent)}", fix))
    else:
        cached = f"{len(names)} in the cache" if names else "none needed"
        found.append(Check("pretrained backbones", OK, cached))
    folder = Path(work_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**30
    found.append(Check("free disk", OK, f"{free:,.1f} GiB free at {folder}"))
    return found


def _slurm(profile: Path | None, partition: str | None, gpus: int) -> Check:
    from . import slurm

    try:
        options = slurm.load_options(profile, partition=partition, gpus=gpus)
        partition = options.partition
        slurm.check_slurm(partition)
        has_gpus = options.gpus == 0 or slurm.partition_has_gpus(partition)
    except UserError as err:
        return Check("Slurm", FAIL, str(err), "see the message; README, 'On Slurm'")
    found = f"sbatch, squeue, scontrol and sinfo answer; partition {partition or 'default'}"
    if not has_gpus:
        fix = "pick a partition whose nodes have GPUs (sinfo -o '%P %G'), or --gpus 0"
        return Check("Slurm", FAIL, f"{found}, but its nodes list no GPUs (gres)", fix)
    return Check("Slurm", OK, found)
