"""The Slurm executor against a real single-node Slurm on localhost (scripts/slurm-sandbox.sh,
started here as root; with two fake GPUs so that GPU requests can be checked without one)."""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seesaw_repro.execution import slurm
from seesaw_repro.execution.executors import follow, run_local, run_slurm, triage
from seesaw_repro.execution.runs import CPU_PROCS, PlannedRun, RunDir, plan
from seesaw_repro.paper.configs import resolve, run_id
from seesaw_repro.paper.recipes import load_table
from seesaw_repro.run_folder import SCRIPT_FILE

pytestmark = pytest.mark.slow

SANDBOX = Path(__file__).parent.parent / "scripts" / "slurm-sandbox.sh"
BASE = os.environ.get("SEESAW_TEST_SLURM_BASE", "/tmp/seesaw-slurm")
CPU_JOB = slurm.SlurmOptions(cpus_per_gpu=1)  # one core per run, as the local executor's


@pytest.fixture(scope="module")
def cluster():
    """A running Slurm: the one already up at BASE, or one started (and stopped) here."""
    conf = f"{BASE}/etc/slurm.conf"
    env = {**os.environ, "SLURM_CONF": conf}
    already_up = (
        Path(conf).exists()
        and shutil.which("sinfo")
        and subprocess.run(["sinfo"], env=env, capture_output=True).returncode == 0
    )
    if not already_up:
        started = subprocess.run(
            ["bash", str(SANDBOX), "up"],
            env={**env, "BASE": BASE, "FAKE_GPUS": "2"},
            capture_output=True,
            text=True,
        )
        if started.returncode == 3:
            pytest.skip(f"Slurm cannot be installed here: {started.stderr.strip()}")
        assert started.returncode == 0, started.stdout + started.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if previous is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = previous
    if not already_up:
        subprocess.run(["bash", str(SANDBOX), "down"], env={**env, "BASE": BASE}, check=True)


def _final_weights(run_dir: RunDir) -> dict[str, torch.Tensor]:
    last = (run_dir.path / "last_checkpoint").read_text().strip()
    return torch.load(last, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_training(a: RunDir, b: RunDir) -> None:
    assert a.metrics() == b.metrics()
    weights_a, weights_b = _final_weights(a), _final_weights(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


def test_table2_trains_on_slurm_as_it_does_locally(
    tmp_path, cluster, quick_data, with_quick_preset
):
    all_runs = plan(load_table("table2"), with_quick_preset.name)
    runs = [all_runs[0], all_runs[-1]]  # CE and the full Seesaw: the first and last rows
    states = run_slurm(runs, tmp_path / "slurm", quick_data, CPU_JOB)
    assert set(states.values()) == {"queued"}
    for run in runs:
        status = RunDir(tmp_path / "slurm", run.run_id).status()
        assert status["executor"] == "slurm" and status["job_id"].isdigit()
    assert follow(runs, tmp_path / "slurm", poll_s=1) == {run.run_id: "done" for run in runs}
    # Submitting again submits nothing: every run is done.
    assert set(run_slurm(runs, tmp_path / "slurm", quick_data, CPU_JOB).values()) == {"done"}

    assert run_local(runs, tmp_path / "local", quick_data, jobs=os.cpu_count() or 1) == {
        run.run_id: "done" for run in runs
    }
    for run in runs:
        _assert_same_training(
            RunDir(tmp_path / "slurm", run.run_id), RunDir(tmp_path / "local", run.run_id)
        )


def test_two_cpu_tasks_train_a_run_as_two_local_processes_do(
    tmp_path, cluster, quick_data, with_quick_preset, monkeypatch
):
    """The multi-GPU path through srun (mmengine's slurm launcher's rendezvous) on CPU."""
    monkeypatch.setenv(CPU_PROCS, "2")
    run = plan(load_table("table2"), with_quick_preset.name)[-1]  # MF + CF + NLA
    on_slurm = RunDir(tmp_path / "slurm", run.run_id)
    assert run_slurm([run], tmp_path / "slurm", quick_data, CPU_JOB) == {run.run_id: "queued"}
    assert "#SBATCH --ntasks-per-node=2\n" in (on_slurm.path / SCRIPT_FILE).read_text()
    assert follow([run], tmp_path / "slurm", poll_s=1) == {run.run_id: "done"}
    assert on_slurm.environments()[0]["processes"] == 2
    assert run_local([run], tmp_path / "local", quick_data, jobs=1) == {run.run_id: "done"}
    _assert_same_training(on_slurm, RunDir(tmp_path / "local", run.run_id))


def _longer_run(preset, iters: int) -> PlannedRun:
    spec = replace(load_table("table2").rows[1].spec, gradient_stats=True)
    config = resolve(spec, preset.name)
    config["train_cfg"]["max_iters"] = config["train_cfg"]["val_interval"] = iters
    return PlannedRun(run_id(config), preset.name, spec, config, ("test:requeue",))


def _wait_for_iteration(run_dir: RunDir, iteration: int) -> None:
    deadline = time.monotonic() + 300
    while (run_dir.progress() or {}).get("iter", 0) < iteration:
        assert not run_dir.is_done() and time.monotonic() < deadline
        time.sleep(0.2)


def test_a_job_requeued_twice_resumes_to_the_uninterrupted_result(
    tmp_path, cluster, quick_data, with_quick_preset
):
    """First the time-limit warning: Slurm sends the batch shell USR1 before the time limit
    (--signal=B:USR1@180); sent here by hand, the script requeues the job. Then a requeue from
    outside (an admin, a preemption): Slurm sends the job SIGTERM. Each time the job
    checkpoints, stops, and resumes; the end equals a run never interrupted."""
    run = _longer_run(with_quick_preset, iters=60)
    run_dir = RunDir(tmp_path / "slurm", run.run_id)
    run_slurm([run], tmp_path / "slurm", quick_data, CPU_JOB)
    job_id = run_dir.status()["job_id"]
    _wait_for_iteration(run_dir, 15)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    _wait_for_iteration(run_dir, 35)  # only reached after the restart
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    assert follow([run], tmp_path / "slurm", poll_s=1) == {run.run_id: "done"}

    log = run_dir.log_file.read_text()
    assert "time limit near: requeueing" in log and "(restart 1)" in log
    assert "stopped by signal 15" in log and "(restart 2)" in log
    assert log.count("resumed epoch: 0, iter: ") == 2
    assert run_local([run], tmp_path / "local", quick_data, jobs=os.cpu_count() or 1) == {
        run.run_id: "done"
    }
    straight = RunDir(tmp_path / "local", run.run_id)
    _assert_same_training(run_dir, straight)
    stats = "gradient_stats.json"
    assert (run_dir.path / stats).read_text() == (straight.path / stats).read_text()


def test_cancel_stops_a_slurm_job_and_the_run_resumes_later(
    tmp_path, cluster, quick_data, with_quick_preset
):
    run = _longer_run(with_quick_preset, iters=60)
    work = tmp_path / "w"
    run_slurm([run], work, quick_data, CPU_JOB)
    run_dir = RunDir(work, run.run_id)
    _wait_for_iteration(run_dir, 5)
    assert slurm.cancel(run_dir)
    status = run_dir.status()
    assert status["state"] == "cancelled" and status["reason"] == f"scancel {status['job_id']}"
    assert slurm.live_job(run_dir, slurm.live_jobs()) is None
    assert "stopped by signal 15" in run_dir.log_file.read_text()
    assert triage([run], work) == [(run, "resume")]
    assert not slurm.cancel(run_dir)  # nothing left to cancel


def test_a_job_slurm_can_never_start_fails_with_slurms_reason(
    tmp_path, cluster, quick_data, with_quick_preset
):
    run = plan(load_table("table2"), with_quick_preset.name)[0]
    work = tmp_path / "w"
    run_slurm([run], work, quick_data, replace(CPU_JOB, cpus_per_gpu=64))  # the node has fewer
    run_dir = RunDir(work, run.run_id)
    job_id = run_dir.status()["job_id"]
    deadline = time.monotonic() + 60
    while (job := slurm.live_jobs().get(job_id)) is None or job.reason == "None":
        assert time.monotonic() < deadline, "Slurm gave no reason for the pending job"
        time.sleep(0.5)
    assert job.summary == "pending: PartitionConfig"
    assert follow([run], work, poll_s=1) == {run.run_id: "failed"}
    reason = run_dir.status()["reason"]
    assert reason.startswith(f"Slurm can never start job {job_id} (PartitionConfig)")
    assert "--cpus-per-gpu" in reason
    assert job_id not in slurm.live_jobs()


def test_slurm_commands_are_retried_and_a_slurm_that_stays_down_is_one_line(
    tmp_path, cluster, monkeypatch
):
    monkeypatch.setattr(slurm, "RETRY_DELAYS", (0.1, 0.1))
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "squeue").write_text(  # fails $FAILS times, as a busy or restarting slurmctld
        f"#!/bin/sh\necho x >> {calls}\n"
        f'[ "$(wc -l < {calls})" -gt "$FAILS" ] && exec {shutil.which("squeue")} "$@"\n'
        "echo 'squeue: error: Socket timed out on send/recv operation' >&2; exit 1\n"
    )
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAILS", "2")
    assert isinstance(slurm.live_jobs(), dict)
    assert len(calls.read_text().split()) == 3
    calls.unlink()
    monkeypatch.setenv("FAILS", "3")  # down for longer than the retries last
    with pytest.raises(slurm.UserError, match="Slurm does not answer: squeue failed 3 times"):
        slurm.live_jobs()
    assert len(calls.read_text().split()) == 3


def _decoupled_pair(preset_name: str) -> tuple[PlannedRun, PlannedRun]:
    runs = plan(load_table("table9"), preset_name)
    child = next(run for run in runs if run.needs)
    parent = next(run for run in runs if run.run_id == child.needs[0])
    return parent, child


def test_a_dependent_run_starts_only_after_its_parent_succeeded(
    tmp_path, cluster, quick_data, with_quick_preset
):
    parent, child = _decoupled_pair(with_quick_preset.name)
    work = tmp_path / "w"
    run_slurm([parent, child], work, quick_data, CPU_JOB)
    parent_dir, child_dir = RunDir(work, parent.run_id), RunDir(work, child.run_id)
    parent_job = parent_dir.status()["job_id"]
    assert child_dir.status()["after"] == [parent_job]
    script = (child_dir.path / SCRIPT_FILE).read_text()
    assert f"--dependency=afterok:{parent_job}" in script
    assert follow([parent, child], work, poll_s=1) == {
        parent.run_id: "done",
        child.run_id: "done",
    }
    assert child_dir.status()["started"] >= parent_dir.status()["ended"]


def test_gpu_jobs_get_their_gpus_and_a_failed_parent_fails_its_child(
    tmp_path, cluster, quick_data, with_quick_preset
):
    """Two fake GPUs: Slurm grants them (CUDA_VISIBLE_DEVICES), the job finds no CUDA and
    fails with a clear reason; its dependent job is then marked failed-dependency."""
    parent, child = _decoupled_pair(with_quick_preset.name)
    work = tmp_path / "w"
    run_slurm([parent, child], work, quick_data, replace(CPU_JOB, gpus=2))
    states = follow([parent, child], work, poll_s=1)
    assert states == {parent.run_id: "failed", child.run_id: "failed"}
    parent_dir, child_dir = RunDir(work, parent.run_id), RunDir(work, child.run_id)
    log = parent_dir.log_file.read_text()
    assert "CUDA_VISIBLE_DEVICES=0,1" in log
    assert "asks for 2 GPU(s) but torch sees 0" in parent_dir.status()["reason"]
    assert child_dir.status()["reason"].startswith("failed-dependency")
    assert "started" not in child_dir.status()
    script = (parent_dir.path / SCRIPT_FILE).read_text()
    assert "--gpus-per-node=2" in script and "--launcher slurm" in script


def _seesaw(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_an_unknown_partition_is_one_clear_line(tmp_path, cluster):
    result = _seesaw(
        "repro", "table2", "--executor", "slurm", "--partition", "gpu-a100", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown Slurm partition 'gpu-a100'; this cluster has: debug" in result.stderr


def test_a_profiles_budget_refuses_an_over_budget_plan(tmp_path, cluster):
    profile = tmp_path / "cluster.toml"
    profile.write_text("budget = 10\n")
    args = ("repro", "table2", "--executor", "slurm", "--profile", str(profile))
    result = _seesaw(*args, cwd=tmp_path)
    assert result.returncode == 2 and "over the budget of 10" in result.stderr, result.stderr
    result = _seesaw(*args, "--budget", "20", "--dry-run", cwd=tmp_path)  # the option wins
    assert result.returncode == 0 and result.stdout.count("trains from the start") == 6
    profile.write_text('budget = "lots"\n')
    result = _seesaw(*args, cwd=tmp_path)
    assert result.returncode == 2 and "budget 'lots' is not a number" in result.stderr


def test_slurm_bad_input_is_one_clear_line(tmp_path):
    profile = tmp_path / "cluster.toml"
    profile.write_text('partition = "gpu"\nnodes = 2\n')
    no_slurm = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    cases = [
        ((), no_slurm, "needs Slurm's sbatch, squeue, scontrol, sinfo, not found on PATH"),
        (("--gpus", "12"), None, "--gpus 12 is not a multiple of --gpus-per-node 8"),
        (("--profile", str(profile)), None, "cluster.toml has unknown key(s) nodes"),
    ]
    for args, env, message in cases:
        result = _seesaw("repro", "table2", "--executor", "slurm", *args, cwd=tmp_path, env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in " ".join(result.stderr.split()), result.stderr


def test_a_profile_sets_sbatch_flags_and_the_command_line_wins(tmp_path):
    profile = tmp_path / "cluster.toml"
    profile.write_text(
        'partition = "gpu"\ngpus_per_node = 4\ntime = "1-00:00:00"\n'
        'sbatch = ["--exclusive", "--mail-type=FAIL"]\n'
    )
    options = slurm.load_options(profile, gpus=8, partition="big", time=None)
    assert options.layout() == (2, 4)
    run = plan(load_table("table2"), "tiny")[0]
    text = slurm.script(run, RunDir(tmp_path, run.run_id), options, after=["41", "42"])
    for flag in (
        "--partition=big",
        "--time=1-00:00:00",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--exclusive",
        "--mail-type=FAIL",
        "--dependency=afterok:41:42",
        "--requeue",
    ):
        assert f"#SBATCH {flag}\n" in text, flag
    assert "--launcher slurm --gpus 4" in text
