"""Executors: the local one (each run in its own process, `jobs` at a time, with a progress
display) and the Slurm one (each run an sbatch job; see slurm.py), over one run lifecycle:
queued -> running -> done | failed | cancelled, recorded in each run's status.json.

A run starts once the runs it needs (their checkpoints) are done; if one of them fails, it
fails too without starting (failed-dependency). A run whose metrics.json exists is skipped.
A run that was stopped (Ctrl-C, preemption, a crash) keeps its checkpoints, and the next
`seesaw repro` resumes it from the newest one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from seesaw_repro.errors import UserError
from seesaw_repro.execution import slurm
from seesaw_repro.execution.runs import (
    FINAL_STATES,
    PlannedRun,
    RunDir,
    cpu_processes,
    failed_dependency,
)
from seesaw_repro.run_folder import LOCKED


@dataclass
class _Active:
    run: PlannedRun
    run_dir: RunDir
    process: subprocess.Popen
    task: TaskID
    log: IO[str]
    gpus: list[str]


def gpu_slots(gpus_per_run: int, jobs: int) -> list[list[str]]:
    """The device groups runs are packed onto: `jobs` CPU slots when `gpus_per_run` is 0,
    else as many groups of `gpus_per_run` of this machine's GPUs as there are."""
    if gpus_per_run == 0:
        return [[] for _ in range(jobs)]
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(devices) < gpus_per_run:
        raise UserError(
            f"--gpus {gpus_per_run} asks for {gpus_per_run} GPU(s) per run but torch sees "
            f"{len(devices)} here: use --gpus 0 (CPU), fewer GPUs, or --executor slurm"
        )
    groups = len(devices) // gpus_per_run
    return [devices[i * gpus_per_run : (i + 1) * gpus_per_run] for i in range(groups)]


def _launch(run_dir: RunDir, threads: int, gpus: list[str]) -> tuple[subprocess.Popen, IO[str]]:
    env = {**os.environ, "SEESAW_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    job = ["-m", "seesaw_repro.job", str(run_dir.path), "--gpus", str(len(gpus))]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    # One process per GPU (or runs.cpu_processes() on CPU); --standalone picks a free port.
    procs = len(gpus) or cpu_processes()
    if procs > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        command = [sys.executable, *torchrun, *job, "--launcher", "pytorch"]
    else:
        command = [sys.executable, *job]
    log = open(run_dir.log_file, "a")  # noqa: SIM115  (closed when the process ends)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    return process, log


ACTIONS = {
    "done": "done; skipped (--force trains it again)",
    "failed": "failed before; skipped (--retry-failed runs it again)",
    "elsewhere": "being trained by another process or queued in Slurm now; skipped",
    "watch": "being trained by another process here: waits for it to end",
    "redo": "done, but --force: trained again (the old run folder is kept)",
    "resume": "resumes from its newest checkpoint",
    "evaluate": "trained, but its evaluation did not finish: evaluates its final checkpoint",
    "train": "trains from the start",
}


# Actions that train a run here (a resumed run is counted whole by --budget).
TRAINS = ("redo", "resume", "train")
# Actions that train nothing here, and their colours.
SKIPPED = {"done": "green", "failed": "red", "elsewhere": "yellow", "watch": "yellow"}


def _say_skipped(console: Console, run: PlannedRun, action: str) -> None:
    colour = SKIPPED[action]
    console.print(f"[{colour}]{action}[/] {run.run_id} ({', '.join(run.rows)}): {ACTIONS[action]}")


def triage(
    runs: list[PlannedRun], work_dir: Path, retry_failed: bool = False, force: bool = False
) -> list[tuple[PlannedRun, str]]:
    """What `seesaw repro` does with each run: one of ACTIONS' keys."""
    run_dirs = [RunDir(work_dir, run.run_id) for run in runs]
    live = slurm.refresh(run_dirs)
    decided = []
    for run, run_dir in zip(runs, run_dirs, strict=True):
        run_dir.check_version()
        if run_dir.is_locked() or slurm.live_job(run_dir, live):
            action = "elsewhere"
        elif run_dir.is_done():
            action = "redo" if force else "done"
        elif run_dir.is_trained():
            action = "evaluate"  # whatever stopped its evaluation, a failure or a kill
        elif run_dir.status()["state"] == "failed" and not retry_failed:
            action = "failed"
        elif run_dir.newest_checkpoint() is not None:
            action = "resume"
        else:
            action = "train"
        decided.append((run, action))
    return decided


def run_local(
    runs: list[PlannedRun],
    work_dir: Path,
    data_root: Path,
    jobs: int = 1,
    console: Console | None = None,
    retry_failed: bool = False,
    force: bool = False,
    gpus_per_run: int = 0,
) -> dict[str, str]:
    """Train and evaluate every run that `triage` says to, `jobs` at a time on the CPU, or
    with `gpus_per_run` GPUs each, as many at once as this machine's GPUs allow; returns run
    id -> final state ("waiting" for a run whose needed run Slurm has queued). A run that
    another process here trains is waited for, and so are the runs that need it."""
    slots = gpu_slots(gpus_per_run, jobs)
    local = _LocalRuns(work_dir, data_root, slots, console or Console(stderr=True))
    local.sort(triage(runs, work_dir, retry_failed, force))
    if not local.pending and not local.watched:
        return local.states
    processes = len(slots) * (gpus_per_run or cpu_processes())  # at once, each its cores
    threads = max(1, (os.cpu_count() or 1) // processes)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    with Progress(*PROGRESS_COLUMNS, console=local.console, transient=False) as progress:
        local.show(progress)
        try:
            while local.pending or local.active or local.watched:
                local.take_back_watched()
                local.settle_blocked()
                local.launch_ready(threads)
                time.sleep(0.5)
                local.collect_ended()
        except KeyboardInterrupt:
            local.cancel_all()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
    return local.states


PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


class _LocalRuns:
    """What one `run_local` call tracks: runs pending, training here (active), or trained by
    another process here (watched: their end is awaited as this process's own, so that runs
    needing them start after them here); each run's final state; the free device slots."""

    def __init__(
        self, work_dir: Path, data_root: Path, slots: list[list[str]], console: Console
    ) -> None:
        self.work_dir = work_dir
        self.data_root = data_root
        self.slots = slots
        self.console = console
        self.states: dict[str, str] = {}
        self.pending: list[tuple[PlannedRun, RunDir]] = []
        self.watched: list[tuple[PlannedRun, RunDir]] = []
        self.active: list[_Active] = []
        self.progress: Progress | None = None
        self.overall = TaskID(0)
        self.to_train = 0

    def sort(self, triaged: list[tuple[PlannedRun, str]]) -> None:
        """Queue the runs to train, watch those another process here trains, skip the rest."""
        for run, action in triaged:
            run_dir = RunDir(self.work_dir, run.run_id)
            if action == "elsewhere" and run_dir.is_locked():
                action = "watch"
            elif action == "redo":
                run_dir.archive()
            if action not in SKIPPED and not run_dir.queue(run, self.data_root):
                action = "watch"  # another `repro` started it since triage
            if action in SKIPPED:
                state = {"elsewhere": "running", "watch": "elsewhere"}.get(action, action)
                self.states[run.run_id] = state
                _say_skipped(self.console, run, action)
            if action == "watch":
                self.watched.append((run, run_dir))
            elif action not in SKIPPED:
                self.pending.append((run, run_dir))

    def show(self, progress: Progress) -> None:
        """Start the overall bar; each launched run adds its own."""
        self.progress = progress
        self.to_train = len(self.pending)
        self.overall = progress.add_task(f"{self.to_train} run(s) to train", total=self.to_train)

    def _advance(self) -> None:
        assert self.progress is not None
        self.progress.update(self.overall, advance=1)

    def take_back_watched(self) -> None:
        """Watched runs whose lock was released: record their end, or train them here when
        the lock's holder left them untrained (a probe, a job that exited at once)."""
        assert self.progress is not None
        for run, run_dir in [item for item in self.watched if not item[1].is_locked()]:
            self.watched.remove((run, run_dir))
            state = "done" if run_dir.is_done() else run_dir.status()["state"]
            if state not in FINAL_STATES and run_dir.queue(run, self.data_root):
                self.pending.append((run, run_dir))
                self.to_train += 1
                self.progress.update(self.overall, total=self.to_train)
            elif state not in FINAL_STATES:
                self.watched.append((run, run_dir))  # locked again by another job
            else:
                self.states[run.run_id] = state
                colour = "green" if state == "done" else "red"
                self.console.print(f"[{colour}]{state}[/] {run.run_id}: in another process")

    def settle_blocked(self) -> None:
        """Pending runs that can never start here: failed (a needed run failed), or left
        waiting when a needed run trains elsewhere (a later `seesaw repro` starts them)."""
        stalled = not self.active and not self.watched and _ready(self.pending, self.states) is None
        for run, run_dir in _blocked(self.pending, self.states, stalled):
            self.pending.remove((run, run_dir))
            self._advance()
            needs = ", ".join(run.needs)
            if any(self.states.get(n) == "running" for n in run.needs):
                self.states[run.run_id] = "waiting"
                run_dir.set_status("queued", reason=f"waits for {needs}")
                self.console.print(
                    f"[yellow]waiting[/] {run.run_id}: needs {needs}, which another "
                    "process is training; run this command again when it is done"
                )
                continue
            reason = failed_dependency(run.needs)
            run_dir.set_status("failed", reason=reason, ended=time.time())
            self.states[run.run_id] = "failed"
            self.console.print(
                f"[red]failed[/] {run.run_id} ({', '.join(run.rows)}): {escape(reason)}"
            )

    def launch_ready(self, threads: int) -> None:
        """Start the runs whose needed runs are done, while device slots are free."""
        assert self.progress is not None
        while self.slots and (ready := _ready(self.pending, self.states)):
            run, run_dir = ready
            self.pending.remove(ready)
            gpus = self.slots.pop()
            process, log = _launch(run_dir, threads, gpus)  # it records "running"
            # Epoch-based configs learn their iteration count from the first progress file
            # (it depends on the dataset's size).
            total = run.config.get("train_cfg", {}).get("max_iters")
            task = self.progress.add_task(f"{run.run_id} {run.rows[0]}", total=total)
            self.active.append(_Active(run, run_dir, process, task, log, gpus))

    def collect_ended(self) -> None:
        """Show each active run's progress; record the state of those whose process ended."""
        assert self.progress is not None
        for item in list(self.active):
            info = item.run_dir.progress()
            if info:
                phase = " (evaluating)" if info["phase"] == "eval" else ""
                self.progress.update(
                    item.task,
                    completed=info["iter"],
                    total=info["max_iters"],
                    description=f"{item.run.run_id} {item.run.rows[0]}{phase}",
                )
            code = item.process.poll()
            if code is not None:
                self._ended(item, code)

    def _ended(self, item: _Active, code: int) -> None:
        item.log.close()
        self.active.remove(item)
        self.slots.append(item.gpus)
        self._advance()
        if code == LOCKED:  # another process took the run between triage and now
            self.states[item.run.run_id] = "elsewhere"
            self.watched.append((item.run, item.run_dir))
            _say_skipped(self.console, item.run, "watch")
            return
        state = item.run_dir.status()["state"]
        killed = {}
        if state == "running":  # killed before it could record its end itself
            state = "cancelled" if code == -signal.SIGTERM else "failed"
            killed = {"reason": f"the job was killed (exit code {code})"}
        item.run_dir.set_status(state, returncode=code, ended=time.time(), **killed)
        self.states[item.run.run_id] = state
        if state != "done":
            reason = item.run_dir.status().get("reason", f"exit code {code}")
            self.console.print(
                f"[red]{state}[/] {item.run.run_id} ({', '.join(item.run.rows)}): "
                + escape(f"{reason}; see {item.run_dir.log_file}")
            )

    def cancel_all(self) -> None:
        """Ctrl-C or SIGTERM: the jobs stop; their checkpoints stay, and the next
        `seesaw repro` resumes them."""
        for item in self.active:
            item.process.terminate()
        for item in self.active:
            item.process.wait()
            item.log.close()
        for run, run_dir in [(item.run, item.run_dir) for item in self.active] + self.pending:
            run_dir.set_status("cancelled", ended=time.time())
            self.states[run.run_id] = "cancelled"
        self.console.print(
            f"[yellow]interrupted:[/] {len(self.active) + len(self.pending)} run(s) cancelled"
        )


def _ready(
    pending: list[tuple[PlannedRun, RunDir]], states: dict[str, str]
) -> tuple[PlannedRun, RunDir] | None:
    """The first pending run whose needed runs are all done."""
    return next(
        (item for item in pending if all(states.get(n) == "done" for n in item[0].needs)), None
    )


def _blocked(
    pending: list[tuple[PlannedRun, RunDir]], states: dict[str, str], stalled: bool
) -> list[tuple[PlannedRun, RunDir]]:
    """Pending runs that can never start: a needed run ended without finishing (or, when
    nothing is running any more, is still not done)."""
    # "running": queued or running in Slurm ("elsewhere", a process here, is waited for)
    ended = {"failed", "cancelled", "running", "waiting"}
    return [
        item
        for item in pending
        if any(states.get(n) in ended for n in item[0].needs)
        or (stalled and _ready([item], states) is None)
    ]


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's kill, a preemption) takes the same path as Ctrl-C."""
    raise KeyboardInterrupt


def cancel_local(run_dir: RunDir, timeout: float = 60.0) -> bool:
    """Stop the job training `run_dir` on this machine (SIGTERM; its checkpoints stay, and
    the next `seesaw repro` resumes it) and mark it cancelled. False if none is running."""
    status = run_dir.status()
    if not run_dir.is_locked() or status.get("host") != socket.gethostname():
        return False
    os.kill(status["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while run_dir.is_locked():
        if time.monotonic() > deadline:
            raise UserError(
                f"the job of {run_dir.path} (pid {status['pid']}) had not stopped "
                f"{timeout:.0f} s after SIGTERM; `kill -9 {status['pid']}` stops it for good"
            )
        time.sleep(0.2)
    run_dir.set_status("cancelled", ended=time.time())
    return True


def run_slurm(
    runs: list[PlannedRun],
    work_dir: Path,
    data_root: Path,
    options: slurm.SlurmOptions,
    console: Console | None = None,
    retry_failed: bool = False,
    force: bool = False,
) -> dict[str, str]:
    """Submit one Slurm job per run that `triage` says to train, each after the jobs of the
    runs it needs; returns run id -> state ("queued" for the submitted ones)."""
    slurm.check_slurm(options.partition)
    # The job runs in its run folder, on other machines: it needs absolute paths.
    work_dir, data_root = Path(work_dir).resolve(), Path(data_root).resolve()
    console = console or Console(stderr=True)
    states: dict[str, str] = {}
    jobs: dict[str, str] = {}  # run id -> its Slurm job, for the runs that need it
    for run, action in triage(runs, work_dir, retry_failed, force):
        run_dir = RunDir(work_dir, run.run_id)
        rows = ", ".join(run.rows)
        if action in SKIPPED:
            status = run_dir.status()
            states[run.run_id] = status["state"] if action == "elsewhere" else action
            if action == "elsewhere" and status.get("executor") == "slurm":
                jobs[run.run_id] = status["job_id"]
            _say_skipped(console, run, action)
            continue
        if action == "redo":
            run_dir.archive()
        run_dir.prepare(run, data_root)
        unfinished = [n for n in run.needs if states.get(n) in ("failed", "cancelled")]
        elsewhere = [n for n in run.needs if states.get(n) == "running" and n not in jobs]
        if unfinished or elsewhere:
            if unfinished:
                reason = failed_dependency(unfinished)
                run_dir.set_status("failed", reason=reason, ended=time.time())
                states[run.run_id] = "failed"
            else:
                reason = f"waits for {', '.join(elsewhere)}, trained outside Slurm now"
                states[run.run_id] = "waiting"
            console.print(f"[red]not submitted[/] {run.run_id} ({rows}): {reason}")
            continue
        after = [jobs[n] for n in run.needs if n in jobs]
        jobs[run.run_id] = slurm.submit(run, run_dir, options, after)
        states[run.run_id] = "queued"
        needs = f" after job(s) {', '.join(after)}" if after else ""
        console.print(f"[cyan]submitted[/] {run.run_id} ({rows}): job {jobs[run.run_id]}{needs}")
    return states


def follow(
    runs: list[PlannedRun], work_dir: Path, console: Console | None = None, poll_s: float = 5.0
) -> dict[str, str]:
    """Show the progress of runs queued in Slurm until each has ended (or was never
    submitted); their final states."""
    console = console or Console(stderr=True)
    run_dirs = [RunDir(work_dir, run.run_id) for run in runs]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        tasks = {d.run_id: progress.add_task(d.run_id, total=None) for d in run_dirs}
        while True:
            live = slurm.refresh(run_dirs)
            states = {}
            for run, run_dir in zip(runs, run_dirs, strict=True):
                job = slurm.live_job(run_dir, live)
                state = run_dir.status()["state"]
                if job is not None:  # Slurm has it: it will run, or runs now
                    state = "running" if job.state == "RUNNING" else "queued"
                states[run.run_id] = state
                info = run_dir.progress() or {}
                where = f"job {job.job_id} {job.summary}" if job else state
                progress.update(
                    tasks[run.run_id],
                    completed=info.get("iter", 0),
                    total=info.get("max_iters"),
                    description=f"{run.run_id} {run.rows[0]}: {where}",
                )
            # "planned": not submitted (it waits for a run trained outside Slurm).
            if all(state in (*FINAL_STATES, "planned") for state in states.values()):
                return states
            time.sleep(poll_s)
