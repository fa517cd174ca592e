"""Every row of every table and figure resolves in both presets, and every distinct model it needs
builds in mmdet, initialises (the paper's backbones from a fake pretrained cache) and takes one
forward/backward pass on a small random batch on CPU (96 px images, fewer proposals and sampled
RoIs than the runs train with: the same model, a cheaper step)."""

import functools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

from seesaw_repro.data import pretrained
from seesaw_repro.execution import runs
from seesaw_repro.paper import configs, recipes

register_all_modules()
pytestmark = pytest.mark.slow


def _fake_lvis_counts(root, num_classes):
    """An LVIS-format train json with long-tailed counts: what EQL, BAGS and the dataset
    counts read when a model is built (the real LVIS v1 is not needed to build one)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cats = [
        {
            "id": i + 1,
            "instance_count": max(1, 5000 // (i + 1)),
            "image_count": max(1, 900 // (i + 1)),
        }
        for i in range(num_classes)
    ]
    images = [{"id": i} for i in range(1000)]
    (root / "annotations" / "lvis_v1_train.json").write_text(
        json.dumps({"categories": cats, "images": images})
    )


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_every_row_builds_and_trains_one_step(preset, tmp_path, tiny_data, pretrained_cache):
    num_classes = {"tiny": 30, "paper": 1203}[preset]
    data_root = tiny_data if preset == "tiny" else tmp_path / "lvis"
    if preset == "paper":
        _fake_lvis_counts(data_root, num_classes)
    planned = {}
    rows = 0
    for name in recipes.known_tables() + recipes.known_figures():
        table = recipes.load_table(name)
        if table.task != "lvis":
            continue  # Tables 10-11: test_every_classification_row_...
        rows += len(table.rows)
        planned.update({run.run_id: run for run in runs.plan(table, preset)})
    assert rows == 83 + 20 and len(planned) == 73  # the figures share Table 1's runs
    models, wrappers = {}, []
    for run in planned.values():
        cfg = configs.materialise(run.config, data_root, tmp_path / "runs" / run.run_id)
        if cfg.model.type == "InstanceTTAModel":  # Table 12's multi-scale flip test
            wrappers.append(cfg.model)
            cfg.model = cfg.model.module
        loss = cfg.model.roi_head.bbox_head
        for head in loss if isinstance(loss, list) else [loss]:
            if head.loss_cls.get("counts") == "checkpoint":  # Pre-Record: a trained run's counts
                path = tmp_path / "runs" / head.loss_cls.checkpoint.split("/runs/")[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                counts = torch.arange(num_classes + 1, dtype=torch.float)
                torch.save(
                    {"state_dict": {"roi_head.bbox_head.loss_cls.cum_samples": counts}}, path
                )
        models.setdefault(json.dumps(cfg.model.to_dict(), sort_keys=True), _fewer_rois(cfg.model))
    assert len(models) == 49
    assert [type(MODELS.build(wrapper)).__name__ for wrapper in wrappers] == ["InstanceTTAModel"]
    # two processes (spawned: a forked torch can hang in its thread pool): building a model
    # is one thread's work, mostly torch's default initialisation
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context, initializer=_start_worker) as pool:
        list(pool.map(_build_and_step, models.values(), [num_classes] * len(models)))


def _start_worker() -> None:
    """A spawned process: mmdet's and this suite's modules registered, one thread."""
    from seesaw_repro import mmdet_plugin  # noqa: F401  (registers losses, hooks)

    register_all_modules()
    torch.set_num_threads(1)  # one per process, two processes on two cores


def _build_and_step(model_cfg, num_classes: int) -> None:
    """Build the model, initialise it (the paper's backbones from the fake pretrained cache
    that TORCH_HOME names), take one forward / backward step, and check it reached the
    classifier."""
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    for name in pretrained.names_in(model_cfg.to_dict()):
        conv1 = "stem.0.weight" if "resnest" in name else "conv1.weight"
        assert torch.equal(model.backbone.state_dict()[conv1], _pretrained(name)[conv1])
    # ResNeSt's split attention normalises pooled 1x1 features: BatchNorm needs two images
    images = 2 if model_cfg.backbone.type == "ResNeSt" else 1
    batch = demo_mm_inputs(
        images,
        [(3, 96, 96)] * images,
        num_items=[3] * images,
        num_classes=num_classes,
        with_mask=True,
    )
    data = model.data_preprocessor(batch, True)
    total, _ = model.parse_losses(model.loss(data["inputs"], data["data_samples"]))
    total.backward()
    assert torch.isfinite(total)
    heads = model.roi_head.bbox_head
    last = heads[-1] if isinstance(heads, torch.nn.ModuleList) else heads
    dual = getattr(last, "dual_cls", None)  # a dual-head fine-tune trains its own
    classifier = dual["out"] if dual is not None else last.fc_cls
    assert_learns(classifier.weight)


@functools.cache
def _pretrained(name: str) -> dict:
    """The (fake) pretrained weights of `name`, as a model's init_weights reads them."""
    state = torch.load(pretrained.cache_path(name), weights_only=True)
    return state.get("state_dict", state)


def _fewer_rois(model_cfg):
    """The model with 64 proposals per image and 16 sampled RoIs per stage: RoIAlign's backward
    and the box head's matmuls on 512 RoIs were most of a paper model's step on CPU."""
    train_cfg = model_cfg.train_cfg
    train_cfg.rpn_proposal.update(nms_pre=128, max_per_img=64)
    stages = train_cfg.rcnn if isinstance(train_cfg.rcnn, list) else [train_cfg.rcnn]
    for stage in stages:
        stage.sampler.num = 16
    return model_cfg


def assert_learns(weight: torch.Tensor) -> None:
    """The loss reached these weights: a finite, non-zero gradient."""
    assert weight.grad is not None
    assert torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


def _fake_split_files(root, num_classes):
    """ImageNet-LT-style split files with long-tailed labels (what CB-focal and EQL read)."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        lines = [f"{split}/{c}/{k}.png {c}" for c in range(num_classes) for k in range(1 + c % 7)]
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("preset", "size"), [("tiny", 28), ("paper", 64)])
def test_every_classification_row_builds_and_trains_one_step(preset, size, tmp_path):
    planned = {}
    for name in ("table10", "table11"):
        planned.update({run.run_id: run for run in runs.plan(recipes.load_table(name), preset)})
    assert len(planned) == 14  # q = 1 is a row of both tables
    num_classes = {"tiny": 10, "paper": 1000}[preset]
    _fake_split_files(tmp_path / "data", num_classes)
    heads = set()
    for run in planned.values():
        cfg = configs.materialise(run.config, tmp_path / "data", tmp_path / "runs" / run.run_id)
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        batch = {
            "inputs": [torch.randint(0, 255, (3, size, size), dtype=torch.uint8) for _ in range(4)],
            "data_samples": [0, 1, 2, num_classes - 1],
        }
        data = model.data_preprocessor(batch, True)
        loss = model(**data, mode="loss")["loss_cls"]
        loss.backward()
        assert torch.isfinite(loss)
        if model.head != "ncm":  # NCM's class means are fitted, not trained
            assert_learns(model.classifier.weight)
        heads.add(model.head)
    assert heads == {"linear", "lws", "tau_norm", "ncm"}
