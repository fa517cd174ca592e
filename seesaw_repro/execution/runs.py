"""Run directories: one per distinct config, named by its run id, holding all its state
(the files: run_folder)."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

from seesaw_repro.errors import UserError
from seesaw_repro.files import read_json, try_lock, write_json_atomic, write_text_atomic
from seesaw_repro.paper import configs
from seesaw_repro.paper.recipes import Table
from seesaw_repro.run_folder import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    LAST_CHECKPOINT_FILE,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    RUN_FILE,
    STATUS_FILE,
)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
SUITE_VERSION = version("seesaw-repro")


def failed_dependency(needs: Iterable[str]) -> str:
    """The reason recorded for a run that cannot start because runs it needs did not finish."""
    return f"failed-dependency: needed run(s) {', '.join(needs)} did not finish"


@dataclass(frozen=True)
class PlannedRun:
    """A distinct run a table needs, with the table rows it stands for."""

    run_id: str
    preset: str
    spec: configs.Spec
    config: dict  # resolved, with the DATA_ROOT and RUNS_DIR placeholders
    rows: tuple[str, ...]
    needs: tuple[str, ...] = ()  # ids of the runs whose checkpoints this one loads


CPU_PROCS = "SEESAW_CPU_PROCS"
# "1": the jobs also log to TensorBoard (repro --tensorboard; Slurm jobs inherit it)
TENSORBOARD = "SEESAW_TENSORBOARD"


def cpu_processes() -> int:
    """Processes per run without GPUs: $SEESAW_CPU_PROCS, default 1. Several train as several
    GPUs would (torchrun or srun, DDP), with gloo: that path, tested without GPUs."""
    text = os.environ.get(CPU_PROCS, "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{CPU_PROCS}={text!r} is not a whole number >= 1")
    return int(text)


def cost(run: PlannedRun) -> float:
    """Estimated cost of training and evaluating `run`, in its preset's cost_unit."""
    return configs.preset_for(configs.task_of(run.spec), run.preset).cost(run.spec)


def plan(table: Table, preset: str, seeds: Iterable[int] = (0,)) -> list[PlannedRun]:
    """The distinct runs behind a table's rows at each seed, each after the runs it needs
    (see configs.dependencies); equal configs are one run."""
    return plan_tables([table], preset, seeds)


def plan_tables(tables: list[Table], preset: str, seeds: Iterable[int] = (0,)) -> list[PlannedRun]:
    """The distinct runs behind several tables' rows at each seed: rows of different tables
    that resolve to the same config are one run."""
    by_id: dict[str, PlannedRun] = {}

    def add(spec: configs.Spec, label: str) -> str:
        needs = tuple(
            add(dep, f"{label} ({role})") for role, dep in configs.dependencies(spec).items()
        )
        config = configs.resolve(spec, preset)
        rid = configs.run_id(config)
        if rid in by_id:
            old = by_id[rid]
            by_id[rid] = replace(old, rows=(*old.rows, label))
        else:
            by_id[rid] = PlannedRun(rid, preset, spec, config, (label,), needs)
        return rid

    for seed in seeds:
        for table in tables:
            for row in table.rows:
                add(replace(row.spec, seed=seed), f"{table.name}:{row.key}")
    return list(by_id.values())


def seeds_in(work_dir: Path) -> list[int]:
    """The seeds of the runs in a work dir (from their run.json), at least [0]."""
    found = {0}
    for info_file in (Path(work_dir) / "runs").glob(f"*/{RUN_FILE}"):
        spec = (read_record(info_file) or {}).get("spec", {})
        found.add(spec.get("seed", 0))
    return sorted(found)


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: "3" is seeds 0, 1, 2; "0,4" (or "4,") exactly those."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if parts and all(part.isdigit() for part in parts):
        seeds = sorted({int(p) for p in parts}) if "," in text else list(range(int(parts[0])))
        if seeds:
            return seeds
    raise UserError(f"--seeds {text!r}: give a count (3 = seeds 0, 1, 2) or seeds (0,4)")


def server_results(result: dict | None) -> list[str]:
    """A done test-dev run's result files for the LVIS evaluation server, from its
    RunDir.result() (else [])."""
    result = result or {}
    return result.get("results", []) if result.get("split") == "test-dev" else []


NEXT_REPRO = "the next repro resumes or evaluates it"


def _is_result(data: object) -> bool:
    """Whether metrics.json's content is what hooks.MetricsFileHook writes."""
    metrics = data.get("metrics") if isinstance(data, dict) else None
    return isinstance(metrics, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in metrics.values()
    )


# The fields of the suite's records in a run folder that readers rely on, and their types.
RECORD_FIELDS = {
    STATUS_FILE: {"state": str, "pid": int, "host": str, "reason": str, "job_id": str},
    PROGRESS_FILE: {"phase": str, "iter": int, "max_iters": int},
    RUN_FILE: {"run_id": str, "preset": str, "spec": dict, "rows": list, "needs": list},
}


def read_record(path: Path) -> dict | None:
    """A record the suite wrote in a run folder (status, progress, run.json), None when
    absent; one edited or damaged (not an object, a field of the wrong type, an unknown
    state) is a UserError naming it."""
    data = read_json(path)
    if data is None:
        return None
    fields = RECORD_FIELDS[Path(path).name]
    if not isinstance(data, dict):
        wrong = ["the whole file"]
    else:
        wrong = [k for k, kind in fields.items() if k in data and not isinstance(data[k], kind)]
        if data.get("state", "queued") not in STATES:
            wrong.append(f"state {data['state']!r}")
    if wrong:
        raise UserError(
            f"{path} was edited or damaged ({', '.join(wrong)} of the wrong type or value): "
            "delete it, and the run's state is read again from its other files"
        )
    return data


def _ended_here(status: dict) -> bool:
    """Whether a local job (no Slurm job id) recorded on this host has no live process."""
    if "job_id" in status or status.get("host") != socket.gethostname() or "pid" not in status:
        return False
    try:
        cmdline = Path(f"/proc/{int(status['pid'])}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return True
    return b"seesaw_repro.job" not in cmdline  # the pid was reused by another program


class RunDir:
    """The on-disk state of one run."""

    def __init__(self, work_dir: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(work_dir) / "runs" / run_id

    @classmethod
    def of(cls, path: Path) -> RunDir:
        """The run whose folder is `path` (<work dir>/runs/<run id>)."""
        path = Path(path)
        return cls(path.parent.parent, path.name)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    def result(self) -> dict | None:
        """metrics.json, or None when the run is not done: its "metrics" (percent) and how
        they were got ("batch": images per iteration, all GPUs together; "speed_device";
        a test-dev run's "split" and "results"). A file that is not such a record (empty,
        truncated, edited) is no result: the run is evaluated again."""
        try:
            data = json.loads((self.path / METRICS_FILE).read_bytes())
        except (FileNotFoundError, ValueError):  # ValueError: not JSON, not UTF-8
            return None
        return data if _is_result(data) else None

    def metrics(self) -> dict | None:
        """The evaluation's metrics (percent), or None when the run is not done."""
        data = self.result()
        return data["metrics"] if data else None

    def is_locked(self) -> bool:
        """Whether a process is training this run now."""
        if not self.path.exists():
            return False
        lock = try_lock(self.path / LOCK_FILE)
        if lock is None:
            return True
        lock.close()
        return False

    def is_done(self) -> bool:
        return self.result() is not None

    def progress(self) -> dict | None:
        return read_record(self.path / PROGRESS_FILE)

    def is_trained(self) -> bool:
        """Training ended (its final checkpoint is the newest) but metrics.json is missing:
        the evaluation after it did not finish."""
        progress = self.progress() or {}
        return (
            not self.is_done()
            and progress.get("phase") == "eval"
            and self.newest_checkpoint() is not None
        )

    def status(self) -> dict:
        """The recorded status; "done" whenever metrics exist, "planned" when nothing ran;
        "failed" when metrics.json is not a result, "cancelled" when the process recorded as
        training it on this host has ended without saying so (killed), each with the reason."""
        recorded = read_record(self.path / STATUS_FILE) or {"state": "planned"}
        if self.is_done():
            return {**recorded, "state": "done"}
        if (self.path / METRICS_FILE).exists():
            reason = f"{METRICS_FILE} is not a result (empty, truncated or edited)"
            return {**recorded, "state": "failed", "reason": f"{reason}; {NEXT_REPRO}"}
        if recorded["state"] == "running" and _ended_here(recorded):
            reason = f"its process (pid {recorded['pid']}) ended without recording it: killed"
            return {**recorded, "state": "cancelled", "reason": f"{reason}; {NEXT_REPRO}"}
        return recorded

    def set_status(self, state: str, **fields: object) -> None:
        """Record a state change, keeping the fields recorded before."""
        assert state in STATES, state
        old = read_record(self.path / STATUS_FILE) or {}
        if state in ("queued", "running"):  # a new attempt: the last one's outcome goes
            old = {k: v for k, v in old.items() if k not in ("reason", "ended", "returncode")}
        write_json_atomic(
            self.path / STATUS_FILE,
            {**old, **fields, "state": state, "host": socket.gethostname(), "updated": time.time()},
        )

    def check_version(self) -> None:
        """Refuse a run folder written by another version of the suite: the same run id
        may not mean the same training there."""
        made_by = (self.info() or {"suite_version": SUITE_VERSION}).get(
            "suite_version", "an unknown version"
        )
        if made_by != SUITE_VERSION:
            raise UserError(
                f"{self.path} was made by seesaw-repro {made_by}, this is {SUITE_VERSION}: "
                "use another --work-dir, or move that folder away to train the run anew"
            )

    def newest_checkpoint(self) -> Path | None:
        """The checkpoint to resume from: the one `last_checkpoint` names, or when that file
        is empty or names none (a full disk while mmengine wrote it), the newest on disk
        (every one is whole: compat writes them atomically)."""
        try:
            named = self.path / Path((self.path / LAST_CHECKPOINT_FILE).read_text().strip()).name
        except FileNotFoundError:
            named = None
        if named is not None and named.suffix == ".pth" and named.is_file():
            return named
        saved = list(self.path.glob("iter_*.pth")) + list(self.path.glob("epoch_*.pth"))
        return max(saved, key=lambda p: int(p.stem.split("_")[1]), default=None)

    def environments(self) -> list[dict]:
        """What each attempt at the run ran on (provenance.environment), oldest first."""
        found = read_json(self.path / ENVIRONMENT_FILE) or []
        if not isinstance(found, list) or not all(isinstance(e, dict) for e in found):
            raise UserError(
                f"{self.path / ENVIRONMENT_FILE} was edited or damaged (not a list of "
                "records): delete it; the run's numbers do not depend on it"
            )
        return found

    def add_environment(self, record: dict) -> None:
        """Append the environment of the attempt starting now."""
        write_json_atomic(self.path / ENVIRONMENT_FILE, [*self.environments(), record])

    def info(self) -> dict | None:
        """run.json: the run's id, preset, spec, rows, needs and suite version (None when
        the run was never prepared)."""
        return read_record(self.path / RUN_FILE)

    def archive(self) -> Path:
        """Move the run's folder aside (to <run id>.old-<time>), so it can be trained anew
        without losing the old one."""
        target = self.path.with_name(f"{self.run_id}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(target)
        return target

    def queue(self, run: PlannedRun, data_root: Path) -> bool:
        """Prepare the run and record it queued, under its lock so that a job of another
        `repro` that started it meanwhile is not overwritten: False (nothing written) then."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = try_lock(self.path / LOCK_FILE)
        if lock is None:
            return False
        with lock:
            self.prepare(run, data_root)
            self.set_status("queued")
        return True

    def prepare(self, run: PlannedRun, data_root: Path) -> None:
        """Write the run's config and description (before it is queued)."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg = configs.materialise(run.config, data_root, self.path)
        write_text_atomic(self.config_file, cfg.pretty_text)
        write_json_atomic(
            self.path / RUN_FILE,
            {
                "run_id": run.run_id,
                "preset": run.preset,
                "spec": asdict(run.spec),
                "rows": run.rows,
                "needs": run.needs,
                "suite_version": SUITE_VERSION,
            },
        )
