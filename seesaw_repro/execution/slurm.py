"""The Slurm executor: each run is one sbatch job, submitted after the jobs of the runs it
needs (`--dependency=afterok`), recorded in the run's status.json; then `seesaw repro`
returns (or follows the jobs with --wait).

Plain sbatch, not submitit: the job is already a command (`python -m seesaw_repro.job
RUN_DIR`), so nothing needs pickling; all state stays in the run directory, keyed on the run
id, where submitit keys its folders on job ids, which restart on a new cluster; and submitit
learns that a job ended from sacct, and waits forever on clusters without accounting.

On preemption, `scontrol requeue` or near the time limit, the job saves a checkpoint of its
current iteration (hooks.StopOnSignalHook) and Slurm starts it again; it resumes there.
"""

from __future__ import annotations

import getpass
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from seesaw_repro.errors import UserError
from seesaw_repro.execution.runs import (
    FINAL_STATES,
    PlannedRun,
    RunDir,
    cpu_processes,
    failed_dependency,
)
from seesaw_repro.files import write_text_atomic
from seesaw_repro.run_folder import SCRIPT_FILE

SIGNAL_GRACE_S = 180  # USR1 this long before the time limit: time to checkpoint and requeue


@dataclass(frozen=True)
class SlurmOptions:
    """What each run's job asks Slurm for."""

    gpus: int = 0  # per run; 0 = a CPU job
    gpus_per_node: int = 8
    cpus_per_gpu: int = 8  # CPU cores per GPU, or per run when gpus == 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    constraint: str | None = None
    sbatch_flags: tuple[str, ...] = field(default=())  # more flags, from a profile file
    budget: float | None = None  # repro's --budget, kept with the cluster's other settings

    def layout(self) -> tuple[int, int]:
        """(nodes, GPUs per node) of one run's job."""
        if self.gpus < 0 or self.gpus_per_node < 1 or self.cpus_per_gpu < 1:
            raise UserError("--gpus must be >= 0, --gpus-per-node and --cpus-per-gpu >= 1")
        if self.gpus <= self.gpus_per_node:
            return 1, self.gpus
        if self.gpus % self.gpus_per_node:
            below = self.gpus // self.gpus_per_node * self.gpus_per_node
            raise UserError(
                f"--gpus {self.gpus} is not a multiple of --gpus-per-node {self.gpus_per_node}: "
                f"a run spans whole nodes; ask for {below} or {below + self.gpus_per_node} GPUs"
            )
        return self.gpus // self.gpus_per_node, self.gpus_per_node


def load_options(profile: Path | None, **given: object) -> SlurmOptions:
    """SlurmOptions from a TOML profile (keys as the options' names, plus `sbatch = [...]`
    for any other sbatch flags), overridden by the options given on the command line."""
    settings: dict = {}
    if profile is not None:
        try:
            settings = tomllib.loads(Path(profile).read_text())
        except FileNotFoundError:
            raise UserError(f"the Slurm profile {profile} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"the Slurm profile {profile} is not valid TOML: {err}") from None
        known = {f.name for f in fields(SlurmOptions)} - {"sbatch_flags"}
        unknown = set(settings) - known - {"sbatch"}
        if unknown:
            raise UserError(
                f"the Slurm profile {profile} has unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known | {'sbatch'}))}"
            )
        flags = settings.pop("sbatch", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise UserError(f'{profile}: sbatch must be a list of flags, e.g. ["--exclusive"]')
        settings["sbatch_flags"] = tuple(flags)
    settings.update({k: v for k, v in given.items() if v is not None})
    try:
        options = SlurmOptions(**settings)
    except TypeError as err:
        raise UserError(f"bad Slurm options: {err}") from None
    options.layout()
    budget = options.budget  # --budget is checked by its option; a profile's here
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int | float) or not budget >= 0
    ):
        raise UserError(f"budget {budget!r} is not a number >= 0 (the Slurm profile's budget)")
    return options


def check_slurm(partition: str | None = None) -> None:
    """Fail with one clear line when this machine cannot submit Slurm jobs, or `partition`
    is not one of the cluster's."""
    tools = ("sbatch", "squeue", "scontrol", "sinfo")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"--executor slurm needs Slurm's {', '.join(missing)}, not found on PATH: run on "
            "a Slurm login node (or load its module), or use --executor local"
        )
    result = _ask(["sinfo", "-h", "-o", "%R"])
    if result.returncode != 0:
        raise UserError(_failed(result))
    partitions = sorted(set(result.stdout.split()))
    if partition is not None and partition not in partitions:
        raise UserError(
            f"unknown Slurm partition {partition!r}; this cluster has: {', '.join(partitions)}"
        )


def partition_has_gpus(partition: str | None) -> bool:
    """Whether the nodes of `partition` (None: the default one) list a GPU generic resource."""
    command = ["sinfo", "-h", "-o", "%G", *(["-p", partition] if partition else [])]
    result = _ask(command)
    if result.returncode != 0:
        raise UserError(_failed(result))
    return "gpu" in result.stdout


def script(run: PlannedRun, run_dir: RunDir, options: SlurmOptions, after: list[str]) -> str:
    """The sbatch script of one run."""
    nodes, gpus_per_node = options.layout()
    tasks = gpus_per_node or cpu_processes()
    launcher = "slurm" if nodes * tasks > 1 else "none"
    flags = [
        f"--job-name={job_name(run.run_id)}",
        f"--output={run_dir.log_file}",
        "--open-mode=append",
        f"--chdir={run_dir.path}",
        "--requeue",
        f"--signal=B:USR1@{SIGNAL_GRACE_S}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks}",
        f"--cpus-per-task={options.cpus_per_gpu}",
    ]
    if gpus_per_node:
        flags.append(f"--gpus-per-node={gpus_per_node}")
    for name in ("partition", "account", "qos", "time", "mem", "constraint"):
        if getattr(options, name):
            flags.append(f"--{name}={getattr(options, name)}")
    if after:
        flags += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
    flags += options.sbatch_flags
    job = shlex.join(
        [
            sys.executable,
            "-m",
            "seesaw_repro.job",
            str(run_dir.path),
            "--launcher",
            launcher,
            "--gpus",
            str(gpus_per_node),
        ]
    )
    header = "\n".join(f"#SBATCH {flag}" for flag in flags)
    return f"""#!/bin/bash
{header}
# seesaw-repro run {run.run_id}: {", ".join(run.rows)}
set -u
echo "seesaw job: Slurm job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname)," \\
  "nodes $SLURM_JOB_NODELIST, CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-none}}, $(date -Is)"
export SEESAW_THREADS=$SLURM_CPUS_PER_TASK OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
# Rendezvous of a multi-process run (mmengine's slurm launcher reads these).
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
# Near the time limit Slurm sends USR1 (--signal): requeue. Slurm then stops the job with
# SIGTERM, it checkpoints its current iteration, and its next start resumes there.
trap 'echo "seesaw job: time limit near: requeueing"; scontrol requeue "$SLURM_JOB_ID"' USR1
srun --kill-on-bad-exit=1 {job} &
step=$!
wait $step
code=$?
while kill -0 $step 2>/dev/null; do wait $step; code=$?; done
exit $code
"""


def job_name(run_id: str) -> str:
    return f"seesaw-{run_id}"


def submit(run: PlannedRun, run_dir: RunDir, options: SlurmOptions, after: list[str]) -> str:
    """Write the run's sbatch script, submit it, record it as queued; the Slurm job id."""
    write_text_atomic(run_dir.path / SCRIPT_FILE, script(run, run_dir, options, after))
    result = subprocess.run(
        ["sbatch", "--parsable", str(run_dir.path / SCRIPT_FILE)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise UserError(
            f"sbatch refused the job of run {run.run_id}: {message}; check --partition, "
            f"--account, --qos and the other Slurm options (script: {run_dir.path / SCRIPT_FILE})"
        )
    job_id = result.stdout.strip().split(";")[0]
    run_dir.set_status(
        "queued", executor="slurm", job_id=job_id, submitted=time.time(), after=after
    )
    return job_id


@dataclass(frozen=True)
class LiveJob:
    job_id: str
    name: str
    state: str  # Slurm's: PENDING, RUNNING, COMPLETING, ...
    reason: str

    @property
    def summary(self) -> str:
        """ "running", or "pending: Resources" with the reason Slurm gives for the wait."""
        waits = self.state == "PENDING" and self.reason not in ("", "None")
        return f"pending: {self.reason}" if waits else self.state.lower()


# Seconds between the tries of a Slurm command that failed: slurmctld busy, restarting or
# failing over answers with errors or socket timeouts for a while.
RETRY_DELAYS = (1.0, 3.0, 9.0)
ANSWER_SECONDS = 120  # a command that has not answered by then counts as failed


def _ask(command: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm client command that only reads or cancels (never sbatch: a timed-out
    submission may have queued its job), tried again after each of RETRY_DELAYS while it
    fails; the last result."""
    result = _run_once(command)
    for delay in RETRY_DELAYS:
        if result.returncode == 0:
            break
        time.sleep(delay)
        result = _run_once(command)
    return result


def _run_once(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=ANSWER_SECONDS)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 1, "", f"no answer in {ANSWER_SECONDS} s")


def _failed(result: subprocess.CompletedProcess) -> str:
    tries = len(RETRY_DELAYS) + 1
    return (
        f"Slurm does not answer: {result.args[0]} failed {tries} times over "
        f"{sum(RETRY_DELAYS):.0f} s ({' '.join(result.stderr.split())}); try again when "
        "`sinfo` answers"
    )


def live_jobs() -> dict[str, LiveJob]:
    """This user's jobs that Slurm still knows as pending or running, by job id."""
    result = _ask(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%j|%T|%r"])
    if result.returncode != 0:
        raise UserError(_failed(result))
    jobs = {}
    for line in result.stdout.splitlines():
        job_id, name, state, reason = line.split("|", 3)
        jobs[job_id] = LiveJob(job_id, name, state, reason)
    return jobs


def live_job(run_dir: RunDir, jobs: dict[str, LiveJob]) -> LiveJob | None:
    """The Slurm job of this run, if it is still pending or running (job ids restart on a
    new cluster, so the name must match too)."""
    job = jobs.get(str(run_dir.status().get("job_id")))
    return job if job and job.name == job_name(run_dir.run_id) else None


# Why Slurm keeps a job pending that no node or limit of the cluster will ever let run.
NEVER_RUNS = {
    "PartitionConfig": "it asks for more CPUs, GPUs, memory or nodes than the partition's "
    "nodes have; lower --cpus-per-gpu, --gpus-per-node or --mem, or pick another --partition",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows; lower --gpus",
    "PartitionTimeLimit": "its --time exceeds the partition's limit; lower --time",
    "BadConstraints": "no node has the features of its --constraint",
    "InvalidAccount": "the --account is not valid",
    "InvalidQOS": "the --qos is not valid",
}


def refresh(run_dirs: list[RunDir]) -> dict[str, LiveJob]:
    """Bring the recorded state of runs submitted to Slurm up to date, and return the live
    jobs. A job gone without recording its end (killed, out of time or memory, cancelled by
    Slurm) is failed or cancelled; one whose needed run failed is failed-dependency; one
    requeued is queued again."""
    tracked = [d for d in run_dirs if d.status().get("executor") == "slurm" and not d.is_done()]
    if not tracked or shutil.which("squeue") is None:
        return {}
    jobs = live_jobs()  # before reading the states: a job that ended has recorded its end
    for run_dir in tracked:
        status = run_dir.status()
        job = live_job(run_dir, jobs)
        if job is not None:
            if job.reason in ("DependencyNeverSatisfied", *NEVER_RUNS):
                _ask(["scancel", job.job_id])
                del jobs[job.job_id]
            if job.reason == "DependencyNeverSatisfied":
                _mark_ended(run_dir, status)
            elif job.reason in NEVER_RUNS:
                run_dir.set_status(
                    "failed",
                    reason=f"Slurm can never start job {job.job_id} ({job.reason}): "
                    f"{NEVER_RUNS[job.reason]}; then `seesaw repro --retry-failed`",
                    ended=time.time(),
                )
            elif status["state"] in FINAL_STATES and status["state"] != "done":
                run_dir.set_status("queued", reason=f"requeued by Slurm ({job.state.lower()})")
            continue
        if status["state"] in ("queued", "running"):
            _mark_ended(run_dir, status)
    return jobs


def _mark_ended(run_dir: RunDir, status: dict) -> None:
    needs = (run_dir.info() or {}).get("needs", [])
    parent_states = {n: RunDir(run_dir.path.parent.parent, n).status()["state"] for n in needs}
    failed_parents = [n for n, s in parent_states.items() if s in ("failed", "cancelled")]
    if status["state"] == "queued" and failed_parents:
        run_dir.set_status("failed", reason=failed_dependency(failed_parents), ended=time.time())
        return
    slurm_state = _accounted_state(status["job_id"])
    state = "cancelled" if slurm_state.startswith("CANCELLED") else "failed"
    error = _last_error(run_dir.log_file)
    run_dir.set_status(
        state,
        reason=f"Slurm job {status['job_id']} ended ({slurm_state}) without finishing the run"
        + (f": {error}" if error else f"; see {run_dir.log_file}"),
        ended=time.time(),
    )


def _last_error(log_file: Path) -> str | None:
    """The last Python exception line in the tail of a job's log (a process killed by srun
    after another rank failed cannot record its error itself)."""
    try:
        with open(log_file, "rb") as log:
            log.seek(max(0, log.seek(0, 2) - 65536))
            tail = log.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    errors = re.findall(r"^(\w+(?:Error|Exception): .*)$", tail, flags=re.MULTILINE)
    return errors[-1][:500] if errors else None


def _accounted_state(job_id: str) -> str:
    """Slurm's final state of a job from accounting, or 'state unknown' without it."""
    if shutil.which("sacct") is None:
        return "state unknown"
    result = _ask(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"])
    lines = result.stdout.split()
    return lines[-1] if result.returncode == 0 and lines else "state unknown"


def cancel(run_dir: RunDir, timeout: float = 90.0) -> bool:
    """scancel the run's job if Slurm still has it, wait until it is gone, mark the run
    cancelled (its checkpoints stay). False if it has no live job."""
    job = live_job(run_dir, live_jobs()) if run_dir.status().get("executor") == "slurm" else None
    if job is None:
        return False
    result = _ask(["scancel", job.job_id])
    if result.returncode != 0:
        raise UserError(_failed(result))
    deadline = time.monotonic() + timeout
    while live_job(run_dir, live_jobs()) is not None:
        if time.monotonic() > deadline:
            raise UserError(
                f"Slurm job {job.job_id} of run {run_dir.run_id} had not ended {timeout:.0f} s "
                f"after scancel; see `squeue -j {job.job_id}` and run `seesaw cancel` again"
            )
        time.sleep(1)
    if not run_dir.is_done():
        run_dir.set_status("cancelled", ended=time.time(), reason=f"scancel {job.job_id}")
    return True
