"""mmengine hooks that leave a run's state on disk for the suite to read.

Both write into the runner's work_dir, so a config trained with mmdet's own tools/train.py
leaves the same files as one trained by `seesaw repro`.
"""

import time
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from .files import write_json_atomic

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.json"

# mmdet's LVISMetric names (prefix "lvis/", values in [0, 1]) -> the paper's columns, in percent.
LVIS_METRICS = {
    "lvis/segm_AP": "AP",
    "lvis/segm_APr": "AP_r",
    "lvis/segm_APc": "AP_c",
    "lvis/segm_APf": "AP_f",
    "lvis/bbox_AP": "AP_box",
}


def paper_metrics(evaluator_metrics: dict) -> dict[str, float]:
    """Pick the paper's five LVIS metrics from an evaluator's output, as percentages."""
    missing = [k for k in LVIS_METRICS if k not in evaluator_metrics]
    if missing:
        raise KeyError(f"the evaluation did not report {missing}")
    return {name: round(100 * float(evaluator_metrics[k]), 2) for k, name in LVIS_METRICS.items()}


@HOOKS.register_module()
class ProgressFileHook(Hook):
    """Writes `progress.json` (iteration, total, seconds per iteration) every few seconds."""

    priority = "VERY_LOW"

    def __init__(self, every_seconds: float = 2.0) -> None:
        self.every_seconds = every_seconds
        self._last_write = 0.0
        self._start: tuple[float, int] | None = None

    def _write(self, runner: Runner, phase: str, iters_done: int) -> None:
        now = time.time()
        if self._start is None:
            self._start = (now, iters_done)
        elapsed, done = now - self._start[0], iters_done - self._start[1]
        write_json_atomic(
            Path(runner.work_dir) / PROGRESS_FILE,
            {
                "phase": phase,
                "iter": iters_done,
                "max_iters": runner.max_iters,
                "sec_per_iter": elapsed / done if done else None,
                "updated": now,
            },
        )
        self._last_write = now

    def before_train(self, runner: Runner) -> None:
        self._write(runner, "train", runner.iter)

    def after_train_iter(
        self, runner: Runner, batch_idx: int, data_batch: object = None, outputs: object = None
    ) -> None:
        # runner.iter counts the iterations before this one until the loop moves on.
        iters_done = runner.iter + 1
        finished = iters_done >= runner.max_iters
        if finished or time.time() - self._last_write >= self.every_seconds:
            self._write(runner, "eval" if finished else "train", iters_done)


@HOOKS.register_module()
class MetricsFileHook(Hook):
    """Writes `metrics.json` once the evaluation after the last training iteration is done.

    That file is the run's "done" mark, so it is written last and atomically.
    """

    priority = "VERY_LOW"

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        if runner.iter < runner.max_iters:
            return
        record: dict = {"split": "val", "iter": runner.iter}
        if metrics:
            record["metrics"] = paper_metrics(metrics)
        else:
            # mmdet's LVISMetric reports nothing when no detection passed the score threshold;
            # the AP of every category with ground truth is then 0.
            record["metrics"] = dict.fromkeys(LVIS_METRICS.values(), 0.0)
            record["note"] = "no detection above the score threshold"
        write_json_atomic(Path(runner.work_dir) / METRICS_FILE, record)
