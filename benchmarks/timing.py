"""What the micro-benchmarks share: the mean time of a step, after a few warm-up calls."""

import time
from collections.abc import Callable


def mean_ms(step: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Milliseconds per call of `step`, averaged over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1000
