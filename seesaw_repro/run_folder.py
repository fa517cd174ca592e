"""The files of a run's folder, named in one place. Light on purpose: the commands that only
read run state (status, report, plan) import it without torch or mmdet.

<work>/runs/<run_id>/
    config.py       the materialised mmengine config (trainable with mmdet's tools/train.py)
    run.json        run id, preset, spec, and the table rows that use this run
    status.json     state (queued, running, done, failed, cancelled), times, exit code
    train.log       the job's stdout and stderr, appended across attempts
    <time>.py, <time>/  each attempt's effective config and mmengine's logs (vis_data/: its
                    scalars, and TensorBoard's events with repro --tensorboard)
    progress.json   iteration counter, written by hooks.ProgressFileHook
    environment.json  what each attempt ran on (provenance.environment), oldest first
    metrics.json    the evaluation, written last by hooks.MetricsFileHook: "done" (a
                    test-dev run: the names of its result files for the LVIS server)
    iter_*.pth      mmengine checkpoints; a rerun resumes from the newest (last_checkpoint)
    job.lock        locked by the process that trains the run, so only one ever does
    slurm.sbatch    the batch script, when the run goes through Slurm
and what some runs write besides: per_category_ap.json (lvis_metric.FastLVISMetric),
gradient_stats.json (Figure 3), classification_accuracy.json (Figure 1).
"""

CONFIG_FILE = "config.py"
RUN_FILE = "run.json"  # what the run is: its id, preset, spec, rows, needs, suite version
STATUS_FILE = "status.json"
LOG_FILE = "train.log"
PROGRESS_FILE = "progress.json"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT_FILE = "last_checkpoint"  # mmengine's: the name of the newest checkpoint
LOCK_FILE = "job.lock"  # held by the process training the run (files.try_lock)
SCRIPT_FILE = "slurm.sbatch"
PER_CATEGORY_FILE = "per_category_ap.json"
GRADIENT_STATS_FILE = "gradient_stats.json"
CLASSIFICATION_ACCURACY_FILE = "classification_accuracy.json"

LOCKED = 75  # the job's exit code when another process trains the run (EX_TEMPFAIL)


def checkpoint_name(unit: str, count: int) -> str:
    """mmengine's checkpoint file name after `count` iterations or epochs (unit "iter"/"epoch")."""
    return f"{unit}_{count}.pth"
