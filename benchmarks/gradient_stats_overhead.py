"""Cost of Figure 3's gradient statistics (hooks.GradientStatsHook) per training step.

Times training steps of the tiny preset's Mask R-CNN (Seesaw, CE-sized batch of 8 images)
with and without the hook, interleaved so that load changes hit both alike, and the hook's
own work on one paper-sized classifier output (N=1024 RoIs x C=1203 classes).

    .venv/bin/python benchmarks/gradient_stats_overhead.py [--steps 20]
"""

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from mmengine.dataset import pseudo_collate

from seesaw_repro import mmdet_plugin  # noqa: F401  (registers)
from seesaw_repro.data import synth
from seesaw_repro.models.losses import ReproSeesawLoss
from seesaw_repro.paper import configs, methods, presets
from seesaw_repro.training.hooks import GradientStatsHook


def _step_times(data_root: Path, steps: int) -> tuple[list[float], list[float]]:
    config = configs.resolve(methods.RunSpec(), "tiny")
    cfg = configs.materialise(config, data_root, data_root / "unused")
    torch.manual_seed(0)
    plain, watched = MODELS.build(cfg.model), MODELS.build(cfg.model)
    GradientStatsHook().before_train(SimpleNamespace(model=watched))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(presets.TINY.batch_size)])
    times: dict[int, list[float]] = {id(plain): [], id(watched): []}
    for step in range(steps + 2):
        for model in (plain, watched) if step % 2 else (watched, plain):
            data = model.data_preprocessor(batch, True)
            start = time.perf_counter()
            total, _ = model.parse_losses(model.loss(data["inputs"], data["data_samples"]))
            total.backward()
            model.zero_grad()
            if step >= 2:  # the first two are warm-up
                times[id(model)].append(time.perf_counter() - start)
    return times[id(plain)], times[id(watched)]


def _watched(loss_fn: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    """`loss_fn` inside the module layout the hook looks for, with the hook attached."""
    model = torch.nn.Module()
    model.roi_head = torch.nn.Module()
    model.roi_head.bbox_head = torch.nn.Module()
    model.roi_head.bbox_head.loss_cls = loss_fn
    model.roi_head.bbox_head.num_classes = num_classes
    GradientStatsHook().before_train(SimpleNamespace(model=model))
    return loss_fn


def _loss_times(repeats: int, n: int = 1024, c: int = 1203) -> tuple[list[float], list[float]]:
    plain, watched = ReproSeesawLoss(num_classes=c), _watched(ReproSeesawLoss(num_classes=c), c)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c + 2, generator=gen).requires_grad_()
    labels = torch.randint(0, c + 1, (n,), generator=gen)
    times: dict[int, list[float]] = {id(plain): [], id(watched): []}
    for step in range(repeats + 2):
        for loss_fn in (plain, watched) if step % 2 else (watched, plain):
            start = time.perf_counter()
            # A fresh non-leaf tensor per step, as a classifier's output is in training (the
            # hook hangs a gradient hook on it; on a reused leaf those would pile up).
            sum(loss_fn(logits * 1, labels).values()).backward()
            logits.grad = None
            if step >= 2:
                times[id(loss_fn)].append(time.perf_counter() - start)
    return times[id(plain)], times[id(watched)]


def _report(name: str, plain: list[float], watched: list[float]) -> None:
    # Each step timed both ways back to back: the ratio of each pair cancels slow drifts.
    ratios = sorted(w / p for p, w in zip(plain, watched, strict=True))
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"{name}: without {statistics.median(plain) * 1000:.2f} ms, "
        f"with {statistics.median(watched) * 1000:.2f} ms (medians); overhead, median of "
        f"{len(ratios)} paired ratios {100 * (statistics.median(ratios) - 1):+.1f}% "
        f"(quartiles {100 * (quartiles[0] - 1):+.1f}%, {100 * (quartiles[2] - 1):+.1f}%)"
    )


def main() -> None:
    """Print the median step time with and without the hook, and the overhead."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    register_all_modules()
    spec = replace(presets.TINY.synth, num_train_images=presets.TINY.batch_size, num_val_images=1)
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), spec)
        _report("tiny Mask R-CNN training step", *_step_times(Path(tmp), args.steps))
    _report("Seesaw loss N=1024 C=1203 forward+backward", *_loss_times(args.steps * 5))


if __name__ == "__main__":
    main()
