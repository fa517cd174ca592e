"""What `seesaw repro` does with each run: skip the done and the failed, leave a run that
another process trains to it, train again on request, say so beforehand (--dry-run), and
fail a run whose loss stops being finite."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seesaw_repro.execution.executors import run_local, triage
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.job import STOPPED
from seesaw_repro.paper import presets
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.run_folder import LOCK_FILE, LOCKED


def _run(preset_name: str):
    return plan(load_table("table2"), preset_name)[0]


@pytest.mark.slow
def test_a_run_locked_by_another_process_is_left_to_it(tmp_path, quick_data, with_quick_preset):
    run = _run(with_quick_preset.name)
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, quick_data)
    holder = subprocess.Popen(  # another process holds the run's lock, as a training job does
        [
            sys.executable,
            "-c",
            "import sys, time; from seesaw_repro.files import try_lock; "
            f"lock = try_lock({str(run_dir.path / LOCK_FILE)!r}); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_dir.is_locked()
        assert triage([run], tmp_path) == [(run, "elsewhere")]
        # A job started anyway (two `seesaw repro` racing) refuses to train it.
        job = subprocess.run(
            [sys.executable, "-m", "seesaw_repro.job", str(run_dir.path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == LOCKED and "another process" in job.stderr
        assert not run_dir.log_file.exists() and run_dir.status()["state"] == "planned"
        # A `repro` whose triage came before the other started it writes nothing either.
        run_dir.set_status("running", pid=holder.pid)
        config = run_dir.config_file.read_text()
        run_dir.config_file.write_text(config + "# the holder's\n")
        assert not run_dir.queue(run, quick_data)
        assert json.loads((run_dir.path / "status.json").read_text())["state"] == "running"
        assert run_dir.config_file.read_text() == config + "# the holder's\n"
    finally:
        holder.kill()
        holder.wait()
    assert not run_dir.is_locked()  # the kernel drops a dead process's lock


def _hold_lock(run_dir: RunDir, then: str = "") -> subprocess.Popen:
    """Another process that holds the run's lock for 3 s, runs `then`, and exits."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from seesaw_repro.files import try_lock, write_json_atomic; "
            f"lock = try_lock({str(run_dir.path / LOCK_FILE)!r}); print('held', flush=True); "
            f"time.sleep(3); {then}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow  # trains the run
def test_a_run_whose_lock_holder_left_it_untrained_is_trained_here(
    tmp_path, quick_data, with_quick_preset
):
    run = _run(with_quick_preset.name)
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, quick_data)
    run_dir.set_status("queued")
    holder = _hold_lock(run_dir)  # a probe, or a job that exited at once: nothing trained
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "done"}
    assert holder.wait(timeout=30) == 0 and run_dir.is_done()


def test_a_run_another_repro_finishes_is_waited_for_and_counts_as_done(tmp_path):
    table2 = plan(load_table("table2"), "tiny")
    run = table2[0]
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, tmp_path / "data")
    result = {"metrics": {"AP": 30.0}, "batch": 8}
    # as a job of another `repro` would: it holds the lock, then finishes the run
    holder = _hold_lock(
        run_dir, f"write_json_atomic({str(run_dir.path / 'metrics.json')!r}, {result!r})"
    )
    started = time.monotonic()
    assert run_local([run], tmp_path, tmp_path / "data") == {run.run_id: "done"}
    assert time.monotonic() - started > 2 and holder.wait(timeout=30) == 0


def test_failed_runs_wait_for_retry_failed_and_force_keeps_the_old_folder(
    tmp_path, quick_data, with_quick_preset
):
    run = _run(with_quick_preset.name)
    run_dir = RunDir(tmp_path, run.run_id)
    assert triage([run], tmp_path) == [(run, "train")]
    run_dir.prepare(run, quick_data)
    run_dir.set_status("failed", returncode=1)
    assert triage([run], tmp_path) == [(run, "failed")]
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "failed"}
    assert triage([run], tmp_path, retry_failed=True) == [(run, "train")]
    (run_dir.path / "metrics.json").write_text('{"metrics": {}}')
    assert triage([run], tmp_path) == [(run, "done")]
    assert triage([run], tmp_path, force=True) == [(run, "redo")]
    old = run_dir.archive()
    assert (old / "metrics.json").exists() and not run_dir.path.exists()
    assert old.name.startswith(f"{run.run_id}.old-")


@pytest.mark.slow  # starts a training job
def test_a_diverging_run_fails_at_its_first_non_finite_loss(
    tmp_path, quick_data, quick_preset, monkeypatch
):
    exploding = dataclasses.replace(quick_preset, name="exploding", lr=1e8)
    monkeypatch.setitem(presets.PRESETS, exploding.name, exploding)
    run = _run(exploding.name)
    assert run_local([run], tmp_path, quick_data) == {run.run_id: "failed"}
    run_dir = RunDir(tmp_path, run.run_id)
    reason = run_dir.status()["reason"]
    assert reason.startswith("Diverged: the loss was") and "the run diverged" in reason
    failed_at = int(reason.split("at iteration ")[1].split(":")[0])
    assert failed_at < exploding.max_iters("2x")  # it stopped there, not at the end
    saved = [int(p.stem.split("_")[1]) for p in run_dir.path.glob("iter_*.pth")]
    assert all(iteration < failed_at for iteration in saved)  # no checkpoint of NaN weights


def _seesaw(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.slow
def test_dry_run_says_what_it_would_do_and_does_nothing(tmp_path):
    result = _seesaw("repro", "table9", "--dry-run", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 11 and all("trains from the start" in line for line in lines)
    assert sum(" after " in line for line in lines) == 6  # the decoupled fine-tunes
    assert not (tmp_path / "w").exists()


def test_status_lists_every_run_with_its_state(tmp_path):
    result = _seesaw("status", "table2", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("planned") == 6


@pytest.mark.slow  # starts a training job
def test_cancel_stops_the_job_and_marks_the_run(tmp_path, quick_data, with_quick_preset):
    from seesaw_repro.execution.executors import cancel_local

    run = _run(with_quick_preset.name)
    run_dir = RunDir(tmp_path, run.run_id)
    run_dir.prepare(run, quick_data)
    assert not cancel_local(run_dir)  # nothing running
    with open(run_dir.log_file, "a") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "seesaw_repro.job", str(run_dir.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while run_dir.progress() is None:
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert run_dir.status()["state"] == "running" and run_dir.status()["pid"] == job.pid
        assert cancel_local(run_dir)
        assert job.wait(timeout=30) == STOPPED
    assert run_dir.status()["state"] == "cancelled" and not run_dir.is_locked()
    # It saved the iteration it was stopped at, and the next repro resumes from there.
    assert "stopped by signal 15" in run_dir.log_file.read_text()
    assert (run_dir.path / "last_checkpoint").exists()
    assert triage([run], tmp_path) == [(run, "resume")]


@pytest.mark.parametrize(
    "command,name,text,expected",
    [
        ("status", "status.json", '{"state": "runn', "status.json is not valid JSON"),
        ("report", "status.json", "\udcff\x00", "status.json is not valid JSON"),
        ("status", "status.json", "[]", "status.json was edited or damaged (the whole file"),
        ("report", "status.json", '{"state": 5}', "status.json was edited or damaged (state"),
        ("status", "status.json", '{"state": "sleeping"}', "(state 'sleeping' of the wrong"),
        ("status", "status.json", '{"state": "running", "pid": "x"}', "damaged (pid of the"),
        ("status", "progress.json", '{"iter": "3"}', "progress.json was edited or damaged (iter"),
        ("collect", "run.json", '{"spec": "x"}', "run.json was edited or damaged (spec"),
        ("collect", "environment.json", '{"host": "x"}', "environment.json was edited or"),
    ],
)
def test_a_corrupt_run_record_is_one_clear_line(tmp_path, command, name, text, expected):
    run = plan(load_table("table2"), "tiny")[0]
    run_dir = RunDir(tmp_path / "w", run.run_id)
    run_dir.prepare(run, tmp_path / "data")
    (run_dir.path / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    args = [command] if command == "collect" else [command, "table2"]
    result = _seesaw(*args, "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.slow
def test_a_run_folder_of_another_suite_version_is_one_clear_line(tmp_path):
    run = plan(load_table("table2"), "tiny")[0]
    run_dir = RunDir(tmp_path / "w", run.run_id)
    run_dir.prepare(run, tmp_path / "data")
    run_json = json.loads((run_dir.path / "run.json").read_text())
    (run_dir.path / "run.json").write_text(json.dumps({**run_json, "suite_version": "0.0.1"}))
    result = _seesaw("repro", "table2", "--dry-run", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was made by seesaw-repro 0.0.1, this is" in " ".join(result.stderr.split())


def _trained_run(work: Path):
    """A run folder as a trained run leaves it: config, final checkpoint named, evaluating."""
    run = plan(load_table("table2"), "tiny")[0]
    run_dir = RunDir(work, run.run_id)
    run_dir.prepare(run, work / "data")
    (run_dir.path / "iter_400.pth").write_bytes(b"")  # never loaded by these tests
    (run_dir.path / "last_checkpoint").write_text(str(run_dir.path / "iter_400.pth"))
    (run_dir.path / "progress.json").write_text(
        json.dumps({"phase": "eval", "iter": 400, "max_iters": 400})
    )
    return run, run_dir


@pytest.mark.parametrize(
    "content",
    [
        b"{}",
        b"[]",
        b"null",
        b'{"metrics": {"AP": 2',
        b"\xff\xfe\x00garbage",
        b'{"metrics": {"AP": "high"}}',
        b'{"metrics": {"AP": NaN}}',
        b'{"metrics": null}',
    ],
)
def test_a_metrics_file_that_is_no_result_is_not_done_and_is_evaluated_again(tmp_path, content):
    run, run_dir = _trained_run(tmp_path / "w")
    (run_dir.path / "metrics.json").write_bytes(content)
    assert not run_dir.is_done() and run_dir.metrics() is None
    assert run_dir.status()["state"] == "failed"
    assert "metrics.json is not a result" in run_dir.status()["reason"]
    assert triage([run], tmp_path / "w") == [(run, "evaluate")]


@pytest.mark.slow
def test_the_commands_read_a_metrics_file_of_random_bytes_as_no_result(tmp_path):
    run, run_dir = _trained_run(tmp_path / "w")
    (run_dir.path / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
    for command in (("status", "table2"), ("report", "table2"), ("collect",)):
        result = _seesaw(*command, "--work-dir", "w", cwd=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    shown = _seesaw("repro", "table2", "--dry-run", "--work-dir", "w", cwd=tmp_path).stdout
    assert "evaluates its final checkpoint" in shown


def test_a_local_job_killed_outright_is_not_shown_running(tmp_path):
    run, run_dir = _trained_run(tmp_path / "w")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir.set_status("running", pid=dead.pid, started=0.0)
    assert run_dir.status()["state"] == "cancelled"
    assert f"pid {dead.pid}" in run_dir.status()["reason"]
    # another host's pid cannot be checked from here
    run_dir.set_status("running", pid=os.getpid())  # not a job: a reused pid
    assert run_dir.status()["state"] == "cancelled"
    status = json.loads((run_dir.path / "status.json").read_text())
    (run_dir.path / "status.json").write_text(json.dumps({**status, "host": "elsewhere"}))
    assert run_dir.status()["state"] == "running"
    result = _seesaw("status", "table2", "--work-dir", "w", cwd=tmp_path)
    assert result.returncode == 0 and "running" in result.stdout
