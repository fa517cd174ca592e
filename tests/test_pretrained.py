"""The paper preset's pretrained backbones: named in the configs as mmdet's are, read from the
local cache without torchvision or a network, missing ones stopped with the fetch command; and
every checkpoint loaded as weights only (a crafted pickle is refused)."""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from functools import partial

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

from seesaw_repro import compat
from seesaw_repro.data import pretrained
from seesaw_repro.errors import UserError
from seesaw_repro.execution import runs
from seesaw_repro.execution.runs import RunDir
from seesaw_repro.job import USER_ERROR
from seesaw_repro.job import main as job_main
from seesaw_repro.paper import recipes

NAMES = {"torchvision://resnet50", "torchvision://resnet101", "open-mmlab://resnest200"}


def _planned(preset):
    tables = [recipes.load_table(n) for n in recipes.known_tables() + recipes.known_figures()]
    return runs.plan_tables(tables, preset)


def _run_with(name):
    """A paper-preset run whose backbone starts from `name`."""
    return next(run for run in _planned("paper") if pretrained.names_in(run.config) == {name})


@pytest.mark.slow
def test_the_paper_runs_start_from_three_backbones_and_the_tiny_ones_from_none():
    assert pretrained.names_in([r.config for r in _planned("paper")]) == NAMES
    assert not any(pretrained.names_in(r.config) for r in _planned("tiny"))
    assert pretrained.cache_path("torchvision://resnet50").name == "resnet50-0676ba61.pth"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_backbone_initialises_from_the_cache(name, pretrained_cache):
    backbone = MODELS.build(_run_with(name).config["model"]["backbone"])
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.init_weights()
    saved = torch.load(pretrained.cache_path(name), weights_only=True)
    saved = saved.get("state_dict", saved)
    loaded = backbone.state_dict()
    # every weight the model shares with the file is the file's; the model's others are what
    # the file cannot hold (BN counters; DCNv2's offsets, new in ResNeSt-200-DCN); the file's
    # others are ImageNet's classifier
    shared = loaded.keys() & saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in shared)
    assert not any(torch.equal(before[k], loaded[k]) for k in shared if before[k].numel() > 1)
    new = ("num_batches_tracked", ".conv_offset.") if "resnest" in name else ("num_batches",)
    assert all(any(part in k for part in new) for k in loaded.keys() - saved.keys())
    assert saved.keys() - loaded.keys() <= {"fc.weight", "fc.bias"}


@pytest.mark.slow
def test_a_missing_checkpoint_stops_a_dry_run_with_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    result = subprocess.run(
        [sys.executable, "-m", "cli", "repro", "table1", "--preset", "paper", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "COLUMNS": "300"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == ""
    assert str(tmp_path / "empty/hub/checkpoints/resnet101-63fe2227.pth") in lines[0]
    assert "`seesaw weights fetch table1 --preset paper`" in lines[0]


@pytest.mark.slow
def test_a_job_whose_checkpoint_is_missing_fails_at_once_with_one_line(
    tmp_path, monkeypatch, capsys, tiny_data
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    run = runs.plan(recipes.load_table("table2"), "tiny")[0]
    run_dir = RunDir(tmp_path / "w", run.run_id)
    run_dir.prepare(run, tiny_data)
    config = run_dir.config_file.read_text()
    run_dir.config_file.write_text(
        config + "\nmodel['backbone']['init_cfg'] = "
        "dict(type='Pretrained', checkpoint='torchvision://resnet50')\n"
    )
    assert job_main(run_dir.path) == USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: pretrained checkpoint(s) missing") and "Traceback" not in err
    status = run_dir.status()
    assert status["state"] == "failed" and "seesaw weights fetch all" in status["reason"]
    assert not list(run_dir.path.glob("*.pth"))


@pytest.mark.slow
def test_an_exported_paper_config_initialises_its_backbone_as_tools_train_would(
    tmp_path, pretrained_cache
):
    """`seesaw config ID --out cfg.py`, then what mmdet's tools/train.py does with it: the
    config's custom_imports load the suite's plugin, the Runner builds the model and
    initialises it, in a fresh process without the suite imported beforehand."""
    run = _run_with("torchvision://resnet50")
    out = tmp_path / "cfg.py"
    subprocess.run(
        [sys.executable, "-m", "cli", "config", run.run_id, "--preset", "paper", "--out", out],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    script = (
        "import torch\n"
        "from mmengine.config import Config\n"
        "from mmengine.runner import Runner\n"
        f"cfg = Config.fromfile({str(out)!r})\n"
        f"cfg.work_dir = {str(tmp_path / 'work')!r}\n"
        "runner = Runner.from_cfg(cfg)\n"
        "runner.model.init_weights()\n"
        "print(float(runner.model.backbone.conv1.weight.sum()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    saved = torch.load(pretrained.cache_path("torchvision://resnet50"), weights_only=True)
    total = float(result.stdout.split()[-1])
    assert total == pytest.approx(float(saved["conv1.weight"].sum()), rel=1e-6)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server of tmp_path/served, and mmengine's open-mmlab:// table pointed at it
    (MMENGINE_HOME/open_mmlab.json, mmengine's own way to add or move checkpoint names)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Files, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_checks_the_digest_and_loads(tmp_path, monkeypatch, file_server):
    served, url = file_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMENGINE_HOME", str(tmp_path / "mmengine"))
    torch.save({"state_dict": {"conv.weight": torch.ones(2)}}, served / "w.pth")
    digest = hashlib.sha256((served / "w.pth").read_bytes()).hexdigest()[:8]
    (served / f"good-{digest}.pth").write_bytes((served / "w.pth").read_bytes())
    (served / "bad-00000000.pth").write_bytes((served / "w.pth").read_bytes())
    (tmp_path / "mmengine").mkdir()
    (tmp_path / "mmengine" / "open_mmlab.json").write_text(
        json.dumps({"good": f"{url}/good-{digest}.pth", "bad": f"{url}/bad-00000000.pth"})
    )
    path = pretrained.fetch("open-mmlab://good")
    assert path == tmp_path / "home" / "hub" / "checkpoints" / f"good-{digest}.pth"
    loaded = CheckpointLoader.load_checkpoint("open-mmlab://good")
    assert torch.equal(loaded["state_dict"]["conv.weight"], torch.ones(2))
    with pytest.raises(UserError, match="could not download .*bad-00000000.pth"):
        pretrained.fetch("open-mmlab://bad")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing half-written


def test_a_checkpoint_that_pickles_a_callable_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"state_dict": {}, "meta": Payload()}, tmp_path / "epoch_1.pth")
    compat.apply()
    with pytest.raises(UserError) as refused:
        CheckpointLoader.load_checkpoint(str(tmp_path / "epoch_1.pth"))
    assert "\n" not in str(refused.value) and "refusing to load" in str(refused.value)
    assert "mkdir" in str(refused.value) and not marker.exists()


@pytest.mark.slow
def test_a_trusted_checkpoint_of_the_old_format_is_refused_until_re_saved(tmp_path, monkeypatch):
    """Before, HistoryBuffer was pickled with its statistics functions (as mmengine does):
    such a file is refused, and `python -m seesaw_repro.compat FILE` makes it loadable."""
    compat.apply()
    hub = MessageHub.get_instance("test_old_format")
    hub.update_scalar("train/loss", 4.0)

    def mmengines_getstate(self):
        return {**self.__dict__, "statistics_methods": self._statistics_methods}

    with monkeypatch.context() as patched:
        patched.setattr(HistoryBuffer, "__getstate__", mmengines_getstate)
        torch.save({"message_hub": hub.state_dict()}, tmp_path / "iter_9.pth")
    path = str(tmp_path / "iter_9.pth")
    with pytest.raises(UserError, match=f"holds getattr.*python -m seesaw_repro.compat {path}"):
        CheckpointLoader.load_checkpoint(path)
    subprocess.run([sys.executable, "-m", "seesaw_repro.compat", path], check=True)
    buffer = CheckpointLoader.load_checkpoint(path)["message_hub"]["log_scalars"]["train/loss"]
    assert buffer.current() == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_9.pth"]


def test_mmengine_training_state_loads_as_weights_only(tmp_path):
    """What a resume reads: the message hub's history buffers (numpy arrays) come back."""
    compat.apply()
    hub = MessageHub.get_instance("test_pretrained")
    for value in (3.0, 1.0, 2.0):
        hub.update_scalar("train/loss", value)
    torch.save({"message_hub": hub.state_dict(), "meta": {"iter": 3}}, tmp_path / "iter_3.pth")
    state = CheckpointLoader.load_checkpoint(str(tmp_path / "iter_3.pth"))
    buffer = state["message_hub"]["log_scalars"]["train/loss"]
    assert buffer.mean() == 2.0 and buffer.min() == 1.0 and buffer.current() == 2.0
