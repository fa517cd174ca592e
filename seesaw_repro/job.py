"""One run, in its own process: `python -m seesaw_repro.job RUN_DIR`.

A test-dev run (methods.test_dev) only predicts: mmengine's test loop writes its result files.

Trains the config in RUN_DIR/config.py with mmengine's Runner, resuming from the newest
checkpoint there if a previous attempt was killed (as tools/train.py --resume would); the
evaluation after the last iteration writes RUN_DIR/metrics.json (see hooks.MetricsFileHook).
"""

import os
import sys
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint


def main(run_dir: Path) -> int:
    """Train and evaluate the run in `run_dir`; returns the process exit code."""
    if "SEESAW_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["SEESAW_THREADS"]))
    # The config's custom_imports loads seesaw_repro.mmdet_plugin, as in mmdet's tools/train.py.
    cfg = Config.fromfile(str(run_dir / "config.py"))
    cfg.work_dir = str(run_dir)
    if find_latest_checkpoint(str(run_dir)):
        # A previous attempt was killed: go on from its newest checkpoint, not from load_from.
        cfg.resume, cfg.load_from = True, None
    runner = Runner.from_cfg(cfg)
    if cfg.get("seesaw", {}).get("job") == "test-dev":
        runner.test()  # the trained run's model on test-dev; no training
    else:
        runner.train()
    if not (run_dir / "metrics.json").exists():
        print(f"the run finished but {run_dir / 'metrics.json'} was not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
