"""Issue 18's trial of a pretrained-like start for the tiny preset (measured; not adopted).

The paper's backbones start from ImageNet, a balanced classification of many of LVIS's
categories; the tiny preset's ResNet-18 of 1/4 width starts from scratch. The stand-in here:
the same backbone trained to classify single digits in colour (the 30 tiny categories,
balanced, on the synth's backgrounds, from the train half of the handwriting), then Table 2's
rows trained from it on a variant of the tiny preset, and their paired effects printed.

    .venv/bin/python scripts/pretrained_start.py pretrain OUT.pth [--steps 2000]
    .venv/bin/python scripts/pretrained_start.py table2 WORK [--checkpoint OUT.pth]
        [--rows ce,mf_cf_nla] [--seeds 0,1,2] [--iters 800] [--batch 4] [--lr 0.01]

Without --checkpoint the rows start from scratch, as the preset's. The variant preset's name
(and so its run ids) carries the schedule and the checkpoint's file name.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from mmdet.models.backbones import ResNet
from torch import nn

from seesaw_repro import mmdet_plugin  # noqa: F401 (registers)
from seesaw_repro.data import synth
from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.paper import presets, recipes
from seesaw_repro.reporting.verdicts import paired_effect

CROP = 64  # px: one digit of 22-40 px on a background
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def digit_crops(
    digits: tuple[np.ndarray, np.ndarray], count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` normalised crops of one digit in one colour each, and their category index
    (colour * 10 + digit, synth's order), the categories drawn uniformly."""
    images, labels = digits
    colours = list(synth.COLOURS.values())
    crops = np.empty((count, CROP, CROP, 3), np.uint8)
    targets = rng.integers(0, 10 * len(colours), count)
    for i, category in enumerate(targets):
        canvas = synth._background(CROP, rng)
        size = int(rng.integers(22, 41))
        x, y = (int(v) for v in rng.integers(0, CROP - size + 1, 2))
        glyph = images[rng.choice(np.flatnonzero(labels == category % 10))]
        synth.paint_digit(
            canvas, cv2.resize(glyph, (size, size)), x, y, colours[category // 10], rng
        )
        crops[i] = canvas
    normalised = ((crops - MEAN) / STD).transpose(0, 3, 1, 2)
    return torch.from_numpy(normalised).float(), torch.from_numpy(targets)


def pretrain(out: Path, steps: int) -> None:
    """Train the tiny backbone on balanced digit crops; save it as mmdet's Pretrained loads it."""
    torch.set_num_threads(2)
    digits = synth._load_digits(np.random.default_rng(0))  # the dataset's handwriting split
    rng = np.random.default_rng(123)
    backbone = ResNet(
        depth=18,
        base_channels=presets.TINY.base_channels,
        out_indices=(3,),
        norm_cfg={"type": "BN", "requires_grad": True},
        norm_eval=False,
    )
    head = nn.Linear(8 * presets.TINY.base_channels, presets.TINY.synth.num_categories)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=steps)
    started = time.time()
    for step in range(steps):
        crops, targets = digit_crops(digits["train"], 64, rng)
        loss = nn.functional.cross_entropy(head(backbone(crops)[0].mean((2, 3))), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - started:.0f} s", flush=True)
    backbone.eval()
    with torch.no_grad():
        crops, targets = digit_crops(digits["val"], 1000, np.random.default_rng(7))
        accuracy = (head(backbone(crops)[0].mean((2, 3))).argmax(1) == targets).float().mean()
    print(f"held-out handwriting: accuracy {accuracy:.3f}; {time.time() - started:.0f} s")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"state_dict": state}, out)


def table2(work: Path, args: argparse.Namespace) -> None:
    """Train Table 2's `args.rows` at `args.seeds` on the variant; print means and effects."""
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    name = f"trial-{args.iters}x{args.batch}-lr{args.lr}-{Path(checkpoint or 'scratch').stem}"
    presets.PRESETS[name] = replace(
        presets.TINY, name=name, iters_2x=args.iters, batch_size=args.batch, lr=args.lr
    )
    tiny_config = presets._tiny_config

    def with_start(spec: presets.RunSpec, preset: presets.TinyPreset, counts: str | None) -> dict:
        config = tiny_config(spec, preset, counts)
        if checkpoint:
            start = {"type": "Pretrained", "checkpoint": checkpoint}
            config["model"]["backbone"]["init_cfg"] = start
        return config

    presets._tiny_config = with_start  # the variant's configs (and run ids) carry the start
    rows = args.rows.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    planned = [
        run
        for run in plan(recipes.load_table("table2"), name, seeds)
        if run.rows[0].split(":")[1] in rows
    ]
    data = presets.TINY.prepare_data(None, work)
    started = time.time()
    run_local(planned, work, data, jobs=2)
    print(f"{len(planned)} runs in {time.time() - started:.0f} s")
    found: dict[str, dict[int, dict]] = {}
    for run in planned:
        metrics = RunDir(work, run.run_id).metrics()
        if metrics:
            found.setdefault(run.rows[0].split(":")[1], {})[run.spec.seed] = metrics
    for metric in ("AP", "AP_r", "AP_c", "AP_f", "AP_box"):
        for row in rows:
            values = np.array([found[row][s][metric] for s in sorted(found.get(row, {}))])
            spread = f" sd {values.std(ddof=1):.1f}" if len(values) > 1 else ""
            print(f"{row:10} {metric:6} {np.round(values, 1)} mean {values.mean():.1f}{spread}")
        for row in rows[1:]:
            effect = paired_effect(
                {s: m[metric] for s, m in found[row].items()},
                {s: m[metric] for s, m in found[rows[0]].items()},
            )
            print(f"{row} - {rows[0]} {metric}: {effect.text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    first = sub.add_parser("pretrain")
    first.add_argument("out", type=Path)
    first.add_argument("--steps", type=int, default=2000)
    second = sub.add_parser("table2")
    second.add_argument("work", type=Path)
    second.add_argument("--checkpoint", default=None)
    second.add_argument("--rows", default="ce,mf_cf_nla")
    second.add_argument("--seeds", default="0,1,2")
    second.add_argument("--iters", type=int, default=800)
    second.add_argument("--batch", type=int, default=4)
    second.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    if args.command == "pretrain":
        pretrain(args.out, args.steps)
    else:
        table2(args.work, args)


if __name__ == "__main__":
    main()
