"""One run, in its own process: `python -m seesaw_repro.job RUN_DIR [--launcher L]`.

Trains the config in RUN_DIR/config.py with mmengine's Runner, resuming from the newest
checkpoint there if a previous attempt was stopped (as tools/train.py --resume would); the
evaluation after the last iteration writes RUN_DIR/metrics.json (see hooks.MetricsFileHook).
A test-dev run (methods.test_dev) only predicts: mmengine's test loop writes its result files;
an "evaluate" run (NCM, tau-norm) fits its head post hoc and is evaluated by the test loop.

The job records its own state (running, then done, failed or cancelled) in status.json; an
executor records only what the job cannot: queued, and a job killed outright. With several
processes (`--launcher pytorch` under torchrun, `--launcher slurm` under srun) only rank 0
takes the run's lock and writes its state.
"""

import argparse
import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from seesaw_repro.errors import UserError
from seesaw_repro.execution import provenance
from seesaw_repro.execution.runs import TENSORBOARD, RunDir
from seesaw_repro.files import try_lock
from seesaw_repro.run_folder import LOCK_FILE, LOCKED, METRICS_FILE
from seesaw_repro.training.hooks import FailOnDivergenceHook, StopOnSignalHook, Stopped

STOPPED = 128 + signal.SIGTERM  # exit code: stopped by a signal, resumable
USER_ERROR = 2  # exit code: something the user must fix first (the message says what)


def main(run_dir: Path, launcher: str = "none", gpus: int = 0) -> int:
    """Train and evaluate the run in `run_dir` with `gpus` GPUs on this node (0: CPU);
    returns the process exit code."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    run = RunDir.of(run_dir)
    if run.is_done():  # e.g. a finished Slurm job requeued by hand: nothing to redo
        print(f"{run_dir} is done already; not training it again", file=sys.stderr)
        return 0
    if rank == 0:
        # held until this process ends; the wait outlasts a probe's (`status`, `repro`),
        # which holds the lock for an instant to see whether a job holds it
        lock = try_lock(run_dir / LOCK_FILE, wait_seconds=2.0)
        if lock is None:
            print(f"{run_dir} is being trained by another process; not starting", file=sys.stderr)
            return LOCKED
        slurm_job = os.environ.get("SLURM_JOB_ID")
        run.set_status(
            "running",
            pid=os.getpid(),
            started=time.time(),
            log=str(run.log_file),
            **({"job_id": slurm_job} if slurm_job else {}),
        )

    def record(state: str, **fields: object) -> None:
        if rank == 0:
            run.set_status(state, ended=time.time(), **fields)

    try:
        if rank == 0:
            run.add_environment(provenance.environment(gpus))
        finished = _train(run, launcher, gpus)
    except (Stopped, KeyboardInterrupt):
        record("cancelled", reason="stopped by a signal; resumes from its last checkpoint")
        return STOPPED
    except UserError as err:  # e.g. a pretrained checkpoint not fetched: the fix, no traceback
        print(f"error: {err}", file=sys.stderr)
        record("failed", reason=str(err))
        return USER_ERROR
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            record("failed", reason=f"{type(err).__name__}: {err}"[:500])
            raise
        reason = (
            f"the disk holding {run_dir} is full ({err.strerror}): free space there, and the "
            "next `seesaw repro` resumes from the last whole checkpoint"
        )
        print(f"error: {reason}", file=sys.stderr)
        with contextlib.suppress(OSError):  # the status file may not fit either
            record("failed", reason=reason)
        return USER_ERROR
    except BaseException as err:
        if StopOnSignalHook.received is not None:  # the signal also failed the step
            print(f"stopped by signal {StopOnSignalHook.received}: {err}", file=sys.stderr)
            record("cancelled", reason="stopped by a signal; resumes from its last checkpoint")
            return STOPPED
        record("failed", reason=f"{type(err).__name__}: {err}"[:500])
        raise
    if not finished:
        print(f"the run finished but {run_dir / METRICS_FILE} was not written", file=sys.stderr)
        record("failed", reason=f"finished without writing {METRICS_FILE}")
        return 1
    record("done")
    return 0


def _train(run: RunDir, launcher: str, gpus: int) -> bool:
    run_dir = run.path
    if gpus > torch.cuda.device_count():
        raise RuntimeError(
            f"the job asks for {gpus} GPU(s) but torch sees {torch.cuda.device_count()} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, torch "
            f"{torch.__version__}): install a CUDA build of torch (setup.sh, VENV=none)"
        )
    if "SEESAW_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["SEESAW_THREADS"]))
    # The config's custom_imports loads seesaw_repro.mmdet_plugin, as in mmdet's tools/train.py.
    cfg = Config.fromfile(str(run.config_file))
    cfg.work_dir = str(run_dir)
    cfg.launcher = launcher
    if os.environ.get(TENSORBOARD) == "1":  # repro --tensorboard; outside the run id
        visualizer = cfg.get("visualizer") or {"type": "Visualizer", "name": "visualizer"}
        visualizer["vis_backends"] = [
            *visualizer.get("vis_backends", []),
            {"type": "TensorboardVisBackend"},
        ]
        cfg.visualizer = visualizer
    if launcher != "none" and gpus == 0:
        # Several CPU processes (runs.cpu_processes): mmengine would pick a CUDA device for
        # each and hand DDP its index; gloo and a DDP over CPU tensors instead. Under srun the
        # rendezvous is the script's MASTER_ADDR/PORT and Slurm's task numbers.
        if launcher == "slurm":
            os.environ.update(
                RANK=os.environ["SLURM_PROCID"],
                LOCAL_RANK=os.environ["SLURM_LOCALID"],
                WORLD_SIZE=os.environ["SLURM_NTASKS"],
            )
        torch.distributed.init_process_group("gloo")
        cfg.model_wrapper_cfg = {
            "type": "MMDistributedDataParallel",
            "device_ids": None,
            "broadcast_buffers": False,
        }
    newest = run.newest_checkpoint()
    if newest is not None:
        # A previous attempt was stopped: go on from its newest checkpoint, not from load_from.
        cfg.resume, cfg.load_from = True, str(newest)
    # mmengine's Runner writes the config it runs into the work dir under the file's name,
    # which would overwrite config.py with this attempt's changes; without a name it writes
    # <timestamp>.py: each attempt's effective config, beside its log folder. Unformatted:
    # mmengine puts the config's text in the log and in every checkpoint, and yapf took ~0.5 s
    # each time (config.py, the run's config, was written formatted once, by `repro`).
    runner = Runner.from_cfg(Config(cfg.to_dict(), format_python_code=False))
    if cfg.get("seesaw", {}).get("job") in ("test-dev", "evaluate"):
        runner.test()  # a trained model on test-dev, or fitted post hoc; no training
    else:
        runner.register_hook(FailOnDivergenceHook())
        runner.train()
        if not run.is_done() and runner.iter >= runner.max_iters:
            # Resumed from the final checkpoint: training had ended, but the evaluation after
            # it was stopped or crashed. Evaluate those weights now.
            runner.val()
    return run.is_done()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs on this node (0: CPU)")
    args = parser.parse_args()
    sys.exit(main(args.run_dir.resolve(), args.launcher, args.gpus))
