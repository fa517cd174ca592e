"""One run, in its own process: `python -m seesaw_repro.job RUN_DIR`.

A test-dev run (methods.test_dev) only predicts: mmengine's test loop writes its result files.

Trains the config in RUN_DIR/config.py with mmengine's Runner, resuming from the newest
checkpoint there if a previous attempt was killed (as tools/train.py --resume would); the
evaluation after the last iteration writes RUN_DIR/metrics.json (see hooks.MetricsFileHook).
"""

import os
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint

from seesaw_repro.files import try_lock
from seesaw_repro.runs import LOCK_FILE, RunDir

LOCKED = 75  # exit code: another process is training this run (EX_TEMPFAIL)


def main(run_dir: Path) -> int:
    """Train and evaluate the run in `run_dir`; returns the process exit code."""
    lock = try_lock(run_dir / LOCK_FILE)
    if lock is None:
        print(f"{run_dir} is being trained by another process; not starting", file=sys.stderr)
        return LOCKED
    run = RunDir(run_dir.parent.parent, run_dir.name)
    run.set_status("running", pid=os.getpid(), started=time.time(), log=str(run.log_file))
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
