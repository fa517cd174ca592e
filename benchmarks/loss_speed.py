"""Forward + backward time of the suite's Seesaw loss, mmdet's SeesawLoss and plain
cross-entropy on the same logits (N RoIs, C classes, objectness branch), in one run.

    .venv/bin/python benchmarks/loss_speed.py [--n 1024] [--classes 1203] [--fg 0.25]

--fg is the fraction of foreground RoIs: 0.25 is what the box head's RoI sampler gives
(pos_fraction 0.25), 1.0 makes every RoI foreground (the Seesaw term's worst case).
"""

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from mmdet.models.losses import SeesawLoss
from timing import mean_ms  # benchmarks/timing.py

from seesaw_repro.models.losses import ReproSeesawLoss


def main() -> None:
    """Print the three times in ms, the ratios, and the largest difference in loss and grad."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--fg", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    n, c = args.n, args.classes
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c + 2, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, c, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) >= args.fg] = c  # background
    prior = torch.randint(0, 10_000, (c + 1,), generator=gen).float()
    ours, theirs = ReproSeesawLoss(num_classes=c), SeesawLoss(num_classes=c)

    def run(loss_fn: torch.nn.Module) -> Callable[[], dict]:
        def step():
            loss_fn.cum_samples.copy_(prior)
            logits.grad = None
            out = loss_fn(logits, labels)
            sum(out.values()).backward()
            return out

        return step

    def cross_entropy():
        logits.grad = None
        F.cross_entropy(logits[:, : c + 1], labels).backward()

    results = {
        "ours": mean_ms(run(ours), args.repeats),
        "mmdet": mean_ms(run(theirs), args.repeats),
        "cross-entropy": mean_ms(cross_entropy, args.repeats),
    }
    value_ours = run(ours)()
    grad_ours = logits.grad.clone()
    value_theirs = run(theirs)()
    diff_value = max(abs(value_ours[k] - value_theirs[k]).item() for k in value_ours)
    diff_grad = (grad_ours - logits.grad).abs().max().item()
    print(
        f"N={n} C={c} foreground={args.fg:.2f} threads={torch.get_num_threads()} "
        "(forward + backward, ms)"
    )
    for name, ms in results.items():
        print(f"  {name:14s} {ms:8.2f} ms")
    print(f"  mmdet / ours          {results['mmdet'] / results['ours']:.2f}x")
    print(f"  ours / cross-entropy  {results['ours'] / results['cross-entropy']:.2f}x")
    print(f"  max |loss diff| {diff_value:.2e}, max |grad diff| {diff_grad:.2e}")


if __name__ == "__main__":
    main()
