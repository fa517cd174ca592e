"""`seesaw doctor`: what would stop a table's runs here, found in seconds rather than after
hours in a queue. Each check says what it found and, when it fails, the fix."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from seesaw_repro.errors import UserError

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
    from seesaw_repro.data import pretrained
    from seesaw_repro.execution import runs
    from seesaw_repro.paper import configs, recipes

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
    found.append(
        _free_disk([r for r in planned if not runs.RunDir(work_dir, r.run_id).is_done()], work_dir)
    )
    return found


def _free_disk(to_train: list, work_dir: Path) -> Check:
    """Free space at the work dir against the checkpoints the runs still to train keep."""
    folder = Path(work_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    sizes: dict[str, int] = {}  # one model build per architecture
    need = 0
    for run in to_train:
        key = json.dumps(run.config["model"], sort_keys=True, default=list)
        if key not in sizes:
            sizes[key] = checkpoint_bytes(run.config["model"])
        keep = run.config["default_hooks"]["checkpoint"].get("max_keep_ckpts", -1)
        need += sizes[key] * (keep if keep > 0 else _checkpoints_saved(run.config))
    found = (
        f"{free / 2**30:,.1f} GiB free at {folder}; the checkpoints the {len(to_train)} run(s) "
        f"still to train keep take about {need / 2**30:,.2f} GiB"
    )
    if need > free:
        fix = f"free {(need - free) / 2**30:,.1f} GiB there, or give another --work-dir"
        return Check("free disk", FAIL, found, fix)
    return Check("free disk", OK, found)


def checkpoint_bytes(model: dict) -> int:
    """About the size of one training checkpoint of a model config: its parameters twice
    (the weights and SGD's momentum) and its buffers, as float32. Losses that read the
    training annotations when built are counted as plain cross-entropy (they hold no
    parameters)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    from seesaw_repro import mmdet_plugin  # noqa: F401  (registers the suite's modules)

    register_all_modules()

    def plain(value: object) -> object:
        if isinstance(value, dict):
            if "ann_file" in value and str(value.get("type", "")).endswith("Loss"):
                return {"type": "CrossEntropyLoss", "loss_weight": 1.0}
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(plain(v) for v in value)
        return value

    net = MODELS.build(ConfigDict(plain(copy.deepcopy(model))))
    parameters = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    return 4 * (2 * parameters + buffers)


def _checkpoints_saved(config: dict) -> int:
    """How many checkpoints a run keeps when it keeps them all: one per interval."""
    loop, interval = config["train_cfg"], config["default_hooks"]["checkpoint"]["interval"]
    total = loop.get("max_epochs") or loop.get("max_iters")
    return max(1, total // interval)


def _slurm(profile: Path | None, partition: str | None, gpus: int) -> Check:
    from seesaw_repro.execution import slurm

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
