"""The local executor on GPUs: a run on one GPU, and a run on two through torchrun (mmengine's
pytorch launcher, NCCL). Skipped where torch sees no CUDA device."""

import pytest
import torch

from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.paper.recipes import load_table

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.parametrize("gpus", [1, 2])
def test_a_run_trains_on_its_gpus(tmp_path, quick_data, with_quick_preset, gpus):
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} CUDA GPUs; torch sees {torch.cuda.device_count()}")
    run = plan(load_table("table2"), with_quick_preset.name)[-1]
    states = run_local([run], tmp_path, quick_data, gpus_per_run=gpus)
    run_dir = RunDir(tmp_path, run.run_id)
    log = run_dir.log_file.read_text()
    assert states == {run.run_id: "done"}, log[-3000:]
    assert "CUDA available: True" in log
    assert f"GPU number: {gpus}" in log
    assert sorted(run_dir.metrics()) == ["AP", "AP_box", "AP_c", "AP_f", "AP_r"]
