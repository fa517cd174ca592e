"""RunSpec + preset -> a plain mmengine config, and the run id that names it.

A config is built with DATA_ROOT and RUNS_DIR as placeholders: its hash is the run id (so
paths never change a run's identity; a run that needs another's checkpoint has that run's
id in its config, hence in its own), and `materialise` then puts the real paths in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmengine.config import Config

from seesaw_repro.errors import UserError
from seesaw_repro.paper import classification_runs, methods
from seesaw_repro.paper.challenge import test_augmentation, training_spec
from seesaw_repro.paper.classification_runs import ClassificationSpec
from seesaw_repro.paper.methods import (
    DATA_ROOT,
    RUNS_DIR,
    WORK_DIR,
    RunSpec,
    SpecError,
    finetune_classifier,
    test_dev,
)
from seesaw_repro.paper.presets import PRESETS, SMOKE, smoke_config
from seesaw_repro.run_folder import checkpoint_name

RUN_ID_LENGTH = 12
Spec = RunSpec | ClassificationSpec  # a row of the LVIS tables, or of Tables 10-11


def task_of(spec: Spec) -> str:
    """The task a spec's run belongs to: "lvis" or "imagenet_lt"."""
    return classification_runs.TASK if isinstance(spec, ClassificationSpec) else "lvis"


def preset_for(task: str, preset: str) -> Any:
    """The preset object (data, scale, cost) of a task's tables."""
    known = classification_runs.PRESETS if task == classification_runs.TASK else PRESETS
    if preset not in known:
        raise SpecError(f"unknown preset {preset!r}; known presets: {', '.join(known)}")
    return known[preset]


def prepare_data(
    task: str, preset: str, data_root: Path | None, work_dir: Path, specs: list[Spec]
) -> Path:
    """The data root for runs of `specs`, checked (or generated: tiny preset), with every
    input they need: a test-dev run also needs the preset's test-dev files."""
    scale = preset_for(task, preset)
    root = scale.prepare_data(data_root, work_dir)
    if any(getattr(spec, "split", "val") == "test-dev" for spec in specs):
        missing = [f for f in scale.test_dev_files if not (Path(root) / f).exists()]
        if missing:
            raise UserError(
                f"the test-dev rows need {', '.join(missing)} in {root}: LVIS v1's test-dev "
                "image info from lvisdataset.org, COCO's test2017 images from cocodataset.org"
            )
    return root


def dependencies(spec: Spec) -> dict[str, Spec]:
    """The runs whose final checkpoint `spec` needs, by role (methods.dependencies,
    ClassificationSpec.dependencies)."""
    if isinstance(spec, ClassificationSpec):
        return spec.dependencies()
    return methods.dependencies(spec)


def resolve(spec: Spec, preset: str) -> dict:
    """The config of `spec` in `preset`, with DATA_ROOT and RUNS_DIR as placeholders."""
    config = _resolve(spec, preset)
    if preset.endswith(SMOKE):
        smoke_config(config)
    return config


def _resolve(spec: Spec, preset: str) -> dict:
    scale = preset_for(task_of(spec), preset)
    needed = {role: resolve(dep, preset) for role, dep in dependencies(spec).items()}
    needs = {role: final_checkpoint(config) for role, config in needed.items()}
    if isinstance(spec, ClassificationSpec):
        return scale.config(spec, needs.get("pretrained"))
    if "trained" in needs:  # a test-dev run is its trained run's config, made to predict
        config = needed["trained"]
        test_dev(config, needs["trained"])
        return config
    if "evaluated" in needs:  # a multi-scale flip test: its trained run's config, tested so
        config = needed["evaluated"]
        test_augmentation(config, needs["evaluated"], scale.challenge)
        return config
    config = scale.config(training_spec(spec), needs.get("counts"))
    if "pretrained" in needs:
        finetune_classifier(config, needs["pretrained"])
    if "first_stage" in needs:  # the dual head: new classification branches, fresh
        finetune_classifier(config, needs["first_stage"], trainable="dual_cls")
    return config


def final_checkpoint(config: dict) -> str:
    """Where the run of `config` leaves its last checkpoint, under the RUNS_DIR placeholder."""
    loop = config["train_cfg"]
    if loop["type"] == "IterBasedTrainLoop":
        name = checkpoint_name("iter", loop["max_iters"])
    else:
        name = checkpoint_name("epoch", loop["max_epochs"])
    return f"{RUNS_DIR}/{run_id(config)}/{name}"


def run_id(config: dict) -> str:
    """The run's identity: a hash of its resolved (placeholder) config's content."""
    canonical = json.dumps(config, sort_keys=True, default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:RUN_ID_LENGTH]


def materialise(
    config: dict, data_root: Path | None, work_dir: Path, runs_dir: Path | None = None
) -> Config:
    """Put the real data root (None: keep the placeholder), work dir and runs dir (default:
    work dir's parent, where its sibling runs are) into a resolved config. Files named under
    the work dir become relative to it (hooks.MetricsFileHook puts them under whichever work
    dir the config is trained in)."""
    runs_dir = Path(runs_dir if runs_dir is not None else Path(work_dir).parent).resolve()
    root = DATA_ROOT if data_root is None else str(Path(data_root).resolve())

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(fill(v) for v in value)
        if isinstance(value, str):
            value = value.replace(DATA_ROOT, root).replace(f"{WORK_DIR}/", "")
            return value.replace(RUNS_DIR, str(runs_dir))
        return value

    filled = fill(config)
    filled["work_dir"] = str(Path(work_dir).resolve())
    return Config(filled)
