"""Effects and verdicts: a row against another, paired by seed, with a t interval.

The difference of two rows at one seed is paired (same data order and initialisation seed);
over n seeds its mean gets a 95% interval from Student's t with n - 1 degrees of freedom. A
claim of the paper (row A vs row B on a metric, with the paper's effect) is then:
reproduced (the interval excludes 0 on the paper's side), contradicted (excludes 0 on the
other side), inconclusive (includes 0), one seed (a sign, no interval), not run (no seed
has both rows), or no paper effect (the paper's numbers do not give its direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
VERDICTS = (
    "reproduced",
    "contradicted",
    "inconclusive",
    "one seed",
    "not run",
    "no paper effect",
)


@dataclass(frozen=True)
class Effect:
    """The mean paired difference over n seeds and its interval (NaN below 2 seeds)."""

    n: int
    mean: float = math.nan
    sd: float = math.nan
    low: float = math.nan
    high: float = math.nan

    def text(self) -> str:
        """ "+1.2 [-0.3, +2.7] n=3", "+1.2 n=1", or "-" when not run."""
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{self.mean:+.1f} n=1"
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}] n={self.n}"


def paired_effect(row: dict[int, float], baseline: dict[int, float]) -> Effect:
    """`row` - `baseline` over the seeds where both have a finite value ({seed: value})."""
    seeds = sorted(s for s in set(row) & set(baseline) if _finite(row[s], baseline[s]))
    diffs = [row[s] - baseline[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Effect(0)
    mean = sum(diffs) / n
    if n == 1:
        return Effect(1, mean)
    from scipy import stats  # 1-2 s to import: only reports with seeds need it

    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)
    return Effect(n, mean, sd, mean - half, mean + half)


def verdict(paper_effect: float, effect: Effect) -> str:
    """The verdict on a claim whose paper effect is `paper_effect` (its sign is the claim)."""
    if effect.n == 0:
        return "not run"
    if not _finite(paper_effect) or paper_effect == 0:
        return "no paper effect"
    if effect.n == 1:
        return "one seed"
    side = math.copysign(1.0, paper_effect)
    if side * effect.low > 0 and side * effect.high > 0:
        return "reproduced"
    if side * effect.low < 0 and side * effect.high < 0:
        return "contradicted"
    return "inconclusive"


def summary(values: dict[int, float]) -> str:
    """A cell of several seeds: "28.6 ± 1.3 (3)"; of one: "28.6"; of none: ""."""
    finite = [v for v in values.values() if _finite(v)]
    if not finite:
        return ""
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return f"{mean:.1f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return f"{mean:.1f} ± {sd:.1f} ({len(finite)})"


def _finite(*values: float) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)
