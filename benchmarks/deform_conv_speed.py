"""Forward + backward time of the suite's DCNv2 arithmetic in torch (deform_conv.py, what
CPU runs use) against mmcv's CPU kernel (which segfaulted in diverging tiny ResNeSt runs), on the
same input, offsets and masks, in one run; also the largest differences.

    .venv/bin/python benchmarks/deform_conv_speed.py [--batch 2] [--channels 64] [--size 32]
        [--groups 2] [--offset-scale 2]

The defaults are a 3x3 split-attention conv of the tiny preset's ResNeSt at stage 2 (radix 2
as conv groups); --offset-scale is the standard deviation of the offsets in pixels.
"""

import argparse
from collections.abc import Callable

import torch
from mmcv.ops import modulated_deform_conv2d
from timing import mean_ms  # benchmarks/timing.py

from seesaw_repro.models.deform_conv import modulated_deform_conv2d as deform_conv_in_torch


def main() -> None:
    """Print both times in ms, their ratio, and the largest output and gradient differences."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--offset-scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, c, size = args.batch, args.channels, args.size
    inputs = [
        torch.randn(n, c, size, size),
        torch.randn(n, 18, size, size) * args.offset_scale,
        torch.rand(n, 9, size, size),
        torch.randn(c, c // args.groups, 3, 3) * 0.1,
        torch.randn(c),
    ]
    for tensor in inputs:
        tensor.requires_grad_(True)
    geometry = ((1, 1), (1, 1), (1, 1), args.groups, 1)
    outputs, grads, times = {}, {}, {}
    for name, conv in (("mmcv", modulated_deform_conv2d), ("ours", deform_conv_in_torch)):

        def step(
            conv: Callable[..., torch.Tensor] = conv,
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            out = conv(*inputs, *geometry)
            return out, torch.autograd.grad(out.square().sum(), inputs)

        outputs[name], grads[name] = step()
        times[name] = mean_ms(step, args.repeats)
    print(f"DCNv2 3x3, input {n}x{c}x{size}x{size}, groups {args.groups}, forward + backward:")
    for name, ms in times.items():
        print(f"  {name:5s} {ms:8.2f} ms")
    print(f"  ours / mmcv  {times['ours'] / times['mmcv']:.2f}x")
    out_diff = (outputs["ours"] - outputs["mmcv"]).abs().max().item()
    grad_diff = max(
        ((a - b).abs().max() / b.abs().max()).item()
        for a, b in zip(grads["ours"], grads["mmcv"], strict=True)
    )
    print(f"  max |output diff| {out_diff:.2e}, max relative |grad diff| {grad_diff:.2e}")


if __name__ == "__main__":
    main()
