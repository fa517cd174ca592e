"""Real training and LVIS evaluation of Table 2 rows on the generated data, on CPU."""

import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seesaw_repro import doctor
from seesaw_repro.compat import load_from_local_safely
from seesaw_repro.execution.executors import run_local, triage
from seesaw_repro.execution.runs import CPU_PROCS, TENSORBOARD, PlannedRun, RunDir, plan
from seesaw_repro.job import STOPPED
from seesaw_repro.paper import presets
from seesaw_repro.paper.configs import resolve, run_id
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.reporting.report import METRICS, compare

LVIS_METRICS = list(METRICS["lvis"])

pytestmark = pytest.mark.slow
CRASH_JOB = Path(__file__).parent / "crash_job.py"


def _runs(preset):
    return plan(load_table("table2"), preset.name)


@pytest.fixture
def learning_preset(monkeypatch, quick_preset):
    """The quick preset trained long enough to learn: 200 iterations of 4 images (lr 0.02 from
    iteration 50 to 133). Measured: CE reaches AP_f 22.3, AP 5.2 on the quick val split."""
    preset = replace(quick_preset, name="learning", iters_2x=200, batch_size=4, lr=0.02)
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset


def test_a_run_learns_writes_five_metrics_and_rerun_does_no_work(
    tmp_path, quick_data, learning_preset, monkeypatch
):
    run = _runs(learning_preset)[0]  # CE
    monkeypatch.setenv(TENSORBOARD, "1")  # as `repro --tensorboard` sets it for its jobs
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "done"}
    run_dir = RunDir(tmp_path, run.run_id)
    assert "Tensorboard" not in run_dir.config_file.read_text()  # not part of the run id
    (events,) = run_dir.path.glob("*/vis_data/events.out.tfevents.*")
    logged = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"loss", "loss_mask", "lr", "lvis/segm_AP", "lvis/segm_APr"} <= set(logged), logged
    metrics = run_dir.metrics()
    assert sorted(metrics) == sorted(LVIS_METRICS)
    # Well above chance (0): a category id or class order that differs between the training
    # labels and the evaluation, or a model that does not learn, scores ~0 here.
    assert metrics["AP_f"] >= 10 and metrics["AP_box"] >= 2, metrics
    assert all(0.0 <= value <= 100.0 for value in metrics.values()), metrics
    assert run_dir.status()["state"] == "done"
    assert run_dir.progress()["iter"] == run.config["train_cfg"]["max_iters"]
    assert run_dir.progress()["phase"] == "eval"
    assert (run_dir.path / "config.py").exists()

    log_before = run_dir.log_file.stat()
    metrics_before = (run_dir.path / "metrics.json").stat().st_mtime_ns
    assert triage([run], tmp_path) == [(run, "done")]
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "done"}
    assert run_dir.log_file.stat().st_size == log_before.st_size
    (environment,) = run_dir.environments()  # one attempt, recorded by the job
    assert environment["torch"] == torch.__version__ and environment["device"] == "CPU"
    assert environment["processes"] == 1 and environment["host"]
    assert (run_dir.path / "metrics.json").stat().st_mtime_ns == metrics_before

    frame = compare(load_table("table2"), learning_preset.name, tmp_path)
    done = frame[frame.run_id == run.run_id].iloc[0]
    assert done.state == "done" and done.AP_repro == metrics["AP"]
    assert done.AP_delta == pytest.approx(metrics["AP"] - 23.7)
    assert set(frame[frame.run_id != run.run_id].state) == {"planned"}


def _gradient_stats_run(preset):
    spec = replace(load_table("table2").rows[1].spec, gradient_stats=True)  # MF only
    config = resolve(spec, preset.name)
    return PlannedRun(run_id(config), preset.name, spec, config, ("test:mf",))


def _json_files_stay_whole(run_dir: Path, stop: threading.Event, bad: list) -> None:
    """Read the run's state files over and over, as `seesaw status` would, noting any
    that is not whole JSON."""
    while not stop.is_set():
        for name in ("status.json", "progress.json", "metrics.json"):
            try:
                text = (run_dir / name).read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except json.JSONDecodeError:
                bad.append((name, text))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, quick_data, quick_preset):
    """The MF run with gradient statistics, trained and evaluated without a stop."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(presets.PRESETS, quick_preset.name, quick_preset)
        run = _gradient_stats_run(quick_preset)
    work = tmp_path_factory.mktemp("straight")
    assert run_local([run], work, quick_data) == {run.run_id: "done"}
    return run, RunDir(work, run.run_id)


def _final_weights(run_dir: RunDir) -> dict:
    last = (run_dir.path / "last_checkpoint").read_text().strip()
    return load_from_local_safely(str(run_dir.path / Path(last).name))["state_dict"]


# (moment, how, the call that crashes: drawn from a seeded generator within the range where
# the moment is what the test means). The quick run has 12 iterations, a checkpoint every 2
# (6 saves) and 30 val images.
CRASHES = {
    "train, kill -9": ("train", "kill", (3, 11)),  # after the first checkpoint, before the end
    "checkpoint half written, kill -9": ("save", "kill", (2, 5)),  # neither first nor last
    "evaluation, kill -9": ("eval", "kill", (1, 30)),
    "evaluation, exception": ("eval", "raise", (1, 30)),
}


@pytest.mark.parametrize("case", list(CRASHES))
def test_a_crash_at_a_seeded_moment_then_a_plain_rerun_gives_the_uninterrupted_result(
    case, tmp_path, quick_data, straight
):
    run, done = straight
    moment, how, (low, high) = CRASHES[case]
    n = random.Random(f"{case} 0").randint(low, high)
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, quick_data)
    stop, bad = threading.Event(), []
    reader = threading.Thread(target=_json_files_stay_whole, args=(run_dir.path, stop, bad))
    reader.start()
    with open(run_dir.log_file, "a") as log:
        crashed = subprocess.run(
            [sys.executable, str(CRASH_JOB), str(run_dir.path), moment, str(n), how],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SEESAW_THREADS": "2"},
        )
    assert crashed.returncode == (-signal.SIGKILL if how == "kill" else 1), case
    # The crash fell where the case says.
    progress = run_dir.progress()
    assert not run_dir.is_done()
    assert progress["phase"] == ("eval" if moment == "eval" else "train"), progress
    saved = int(re.search(r"iter_(\d+)\.pth", (run_dir.path / "last_checkpoint").read_text())[1])
    if moment == "train":
        # killed before its nth iteration: n - 1 done, the last checkpoint before them
        assert saved < n < run.config["train_cfg"]["max_iters"] and progress["iter"] < n
    if moment == "save":
        [half] = run_dir.path.glob(f".iter_{2 * n}.pth.*.tmp")  # not under a checkpoint's name
        assert saved == 2 * (n - 1) and 0 < half.stat().st_size
        assert not (run_dir.path / f"iter_{2 * n}.pth").exists()
        with pytest.raises(Exception):  # noqa: B017  (truncated: torch's error varies)
            torch.load(half, weights_only=True)
    expected = "evaluate" if moment == "eval" else "resume"
    assert [action for _, action in triage([run], tmp_path)] == [expected]

    assert run_local([run], tmp_path, quick_data) == {run.run_id: "done"}
    stop.set()
    reader.join()
    assert not bad, f"a reader saw a partial file: {bad[0]}"
    message = f"{case} at call {n}"
    assert run_dir.metrics() == done.metrics(), message
    weights, uninterrupted = _final_weights(run_dir), _final_weights(done)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights), message
    stats = json.loads((run_dir.path / "gradient_stats.json").read_text())
    assert stats == json.loads((done.path / "gradient_stats.json").read_text()), message
    head = stats["heads"]["roi_head.bbox_head.loss_cls"]
    assert stats["iter"] == run.config["train_cfg"]["max_iters"]
    assert len(head["positive"]) == len(head["negative"]) == 30
    assert sum(head["negative"]) > 0 and sum(head["positive"]) > 0


def test_a_full_disk_fails_the_run_in_one_line_and_it_resumes_once_freed(
    small_disk, quick_data, straight, capsys
):
    from rich.console import Console

    run, done = straight
    checkpoint_bytes = max(p.stat().st_size for p in done.path.glob("iter_*.pth"))
    # what `seesaw doctor` expects a checkpoint of this model to take, against a real one
    assert doctor.checkpoint_bytes(run.config["model"]) == pytest.approx(checkpoint_bytes, 0.1)
    disk = small_disk(int(1.5 * checkpoint_bytes))  # the first checkpoint fits, not the second
    console = Console(stderr=True, width=400)
    assert run_local([run], disk, quick_data, console=console) == {run.run_id: "failed"}
    run_dir = RunDir(disk, run.run_id)
    reason = run_dir.status()["reason"]
    assert reason.startswith(f"the disk holding {run_dir.path} is full (No space left")
    said = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert len(said) == 1 and "is full" in said[0]
    log = run_dir.log_file.read_text()
    assert "Traceback" not in log and "error: the disk holding" in log
    leftovers = [p.name for p in run_dir.path.rglob("*") if "tmp" in p.name or "partial" in p.name]
    assert not leftovers
    for checkpoint in run_dir.path.glob("iter_*.pth"):  # whole, every one
        load_from_local_safely(str(checkpoint))
    assert run_dir.newest_checkpoint() is not None

    small_disk(20 * checkpoint_bytes)  # space freed: the next repro resumes
    assert triage([run], disk) == [(run, "failed")]
    assert run_local([run], disk, quick_data, retry_failed=True) == {run.run_id: "done"}
    assert run_dir.metrics() == done.metrics()
    weights, uninterrupted = _final_weights(run_dir), _final_weights(done)
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_repro_stops_its_jobs_and_records_it(tmp_path, tiny_data, sig):
    command = [str(os.path.join(os.path.dirname(sys.executable), "seesaw")), "repro", "table2"]
    repro = subprocess.Popen(
        [*command, "--work-dir", str(tmp_path), "--jobs", "2", "--data-root", str(tiny_data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A shell without job control starts background commands with SIGINT ignored, and
        # children inherit that (a new session does not reset it): give the child Ctrl-C back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 240
    while len(list(runs.glob("*/progress.json"))) < 2:
        assert repro.poll() is None, repro.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.5)
    pids = [json.loads(p.read_text()).get("pid") for p in runs.glob("*/status.json")]
    repro.send_signal(sig)
    output = repro.communicate(timeout=60)[0]
    assert repro.returncode != 0
    assert "Traceback" not in output and "cancelled" in output
    for pid in filter(None, pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    states = [json.loads(p.read_text())["state"] for p in runs.glob("*/status.json")]
    assert sorted(states) == ["cancelled"] * 6


def test_sigterm_to_every_process_of_a_job_with_loader_workers_stops_it_resumably(
    tmp_path, quick_data, quick_preset
):
    # As Slurm stops a job (requeue, preemption, time limit): SIGTERM to each of its
    # processes, the data-loader workers too (the paper preset's loaders have 2 each).
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(presets.PRESETS, quick_preset.name, quick_preset)
        ce = _runs(quick_preset)[0]
    config = copy.deepcopy(ce.config)
    config["train_dataloader"].update(num_workers=2, persistent_workers=True)
    run = PlannedRun(run_id(config), ce.preset, ce.spec, config, ce.rows)
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, quick_data)
    with open(run_dir.log_file, "a") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "seesaw_repro.job", str(run_dir.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the job and its workers
            env={**os.environ, "SEESAW_THREADS": "1"},
        )
    deadline = time.monotonic() + 180
    while (run_dir.progress() or {}).get("iter", 0) < 3:
        assert job.poll() is None and time.monotonic() < deadline, run_dir.log_file.read_text()
        time.sleep(0.2)
    assert len(_children(job.pid)) >= 2  # the workers
    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=120) == STOPPED, run_dir.log_file.read_text()[-3000:]
    assert run_dir.status()["state"] == "cancelled"
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "done"}


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def test_an_exported_config_trains_with_mmdets_own_tools_train_and_writes_only_there(
    tmp_path, quick_data, with_quick_preset, monkeypatch
):
    import mmdet
    from typer.testing import CliRunner

    from cli import app
    from seesaw_repro.paper import classification_runs

    # `seesaw config` looks the id up among every table's runs, Tables 10-11's too
    tiny = classification_runs.PRESETS["tiny"]
    monkeypatch.setitem(classification_runs.PRESETS, with_quick_preset.name, tiny)

    train_py = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"
    run = _runs(with_quick_preset)[0]
    run_dir = RunDir(tmp_path / "w", run.run_id)  # a finished run: what it holds stays
    run_dir.prepare(run, quick_data)
    for name in ("metrics.json", "per_category_ap.json"):
        (run_dir.path / name).write_text('{"metrics": {}}')
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.path.iterdir()}
    config_file = tmp_path / "config.py"
    exported = CliRunner().invoke(
        app,
        [
            "config",
            run.run_id,
            "--preset",
            with_quick_preset.name,
            "--work-dir",
            str(tmp_path / "w"),
            "--data-root",
            str(quick_data),
            "--out",
            str(config_file),
        ],
    )
    assert exported.exit_code == 0, exported.output
    result = subprocess.run(
        [sys.executable, str(train_py), str(config_file), "--work-dir", str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "mine" / "metrics.json").read_text())["metrics"]
    assert sorted(metrics) == sorted(LVIS_METRICS)
    assert (tmp_path / "mine" / "per_category_ap.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.path.iterdir()} == before


def test_two_cpu_processes_train_a_run_as_two_gpus_would(
    tmp_path, quick_data, with_quick_preset, monkeypatch
):
    """The multi-GPU path (torchrun, one process per device, DDP) on CPU with gloo: both
    ranks train, Seesaw's class counts are summed over them, rank 0 alone writes the run's
    files."""
    monkeypatch.setenv(CPU_PROCS, "2")
    run = _runs(with_quick_preset)[-1]  # MF + CF + NLA
    assert run_local([run], tmp_path, quick_data, jobs=1) == {run.run_id: "done"}
    run_dir = RunDir(tmp_path, run.run_id)
    assert "Distributed training: True" in run_dir.log_file.read_text()
    (environment,) = run_dir.environments()
    assert environment["processes"] == 2
    assert sorted(run_dir.metrics()) == sorted(LVIS_METRICS)
    config = run.config
    iters, images = config["train_cfg"]["max_iters"], config["train_dataloader"]["batch_size"]
    rois = config["model"]["train_cfg"]["rcnn"]["sampler"]["num"]
    final = run_dir.path / f"iter_{iters}.pth"
    weights = load_from_local_safely(str(final), map_location="cpu")["state_dict"]
    counts = weights["roi_head.bbox_head.loss_cls.cum_samples"]
    # every RoI the sampler drew on either rank counted once: 2 processes x images x RoIs
    assert counts.sum().item() == iters * 2 * images * rois
    assert not list(run_dir.path.glob(".*.tmp"))
