"""`seesaw repro TABLE --preset paper --smoke`: the paper preset's runs cut short, on the
LVIS-shaped generated data, in a folder of their own."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.paper import presets, recipes
from seesaw_repro.paper.configs import final_checkpoint
from seesaw_repro.reporting.report import METRICS

SMOKE = f"paper{presets.SMOKE}"


def _seesaw(*args, cwd):
    script = Path(sys.executable).parent / "seesaw"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize("table", ["table02", "table01", "table04", "table09", "table12"])
def test_a_smoke_run_is_its_paper_run_cut_to_a_slice_of_the_data(table):
    paper, smoke = (plan(recipes.load_table(table), p) for p in ("paper", SMOKE))
    assert [r.rows for r in smoke] == [r.rows for r in paper]
    assert not {r.run_id for r in smoke} & {r.run_id for r in paper}  # never the same folder
    smoke_ids = {r.run_id for r in smoke}
    for real, cut in zip(paper, smoke, strict=True):
        config = cut.config
        train = config["train_dataloader"]["dataset"]
        assert train.get("dataset", train)["indices"] == presets.SMOKE_TRAIN_IMAGES
        assert config["val_dataloader"]["dataset"]["indices"] == presets.SMOKE_EVAL_IMAGES
        assert config["train_cfg"]["max_epochs"] == 1 and config["seesaw"]["smoke"]
        if not real.needs:  # else it loads its smoke parent's checkpoint, not the real one's
            expected = copy.deepcopy(real.config)
            presets.smoke_config(expected)
            assert config == expected
            continue
        assert set(cut.needs) <= smoke_ids
        text = json.dumps(config)
        assert all(r.run_id not in text for r in paper)
        parents = [r for r in smoke if r.run_id in cut.needs]
        assert any(final_checkpoint(p.config) in text for p in parents)


def test_smoke_is_for_the_paper_presets_lvis_tables(tmp_path):
    result = _seesaw("repro", "table2", "--smoke", cwd=tmp_path)
    assert result.returncode == 2 and "add --preset paper" in result.stderr
    result = _seesaw("repro", "table10", "--preset", "paper", "--smoke", cwd=tmp_path)
    assert result.returncode == 2 and "ImageNet-LT" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "seesaw-work").exists()


@pytest.mark.slow  # trains a paper-size Mask R-CNN at 1333 x 800 for a few iterations
def test_a_smoke_run_trains_and_evaluates_the_paper_pipeline_on_lvis_shaped_data(
    tmp_path, lvis_shaped, pretrained_cache
):
    args = ("repro", "table2", "--preset", "paper", "--smoke", "--data-root", str(lvis_shaped))
    result = _seesaw(*args, "--work-dir", "w", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = plan(recipes.load_table("table2"), SMOKE)
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == [r.run_id for r in runs]
    # The full Seesaw row: RFS over the LVIS-format annotations, multi-scale training, the
    # 1333 x 800 test and the LVIS evaluation of 1203 categories, under WORK_DIR/smoke.
    run = runs[-1]
    assert run.rows == ("table02:mf_cf_nla",)
    work = tmp_path / "w" / "smoke"
    assert run_local([run], work, lvis_shaped) == {run.run_id: "done"}
    metrics = RunDir(work, run.run_id).metrics()
    assert sorted(metrics) == sorted(METRICS["lvis"])
    assert all(0.0 <= value <= 100.0 for value in metrics.values())
    assert not (tmp_path / "w" / "runs").exists()
    log = (work / "runs" / run.run_id / "train.log").read_text()
    assert "Epoch(train) [1][1/1]" in log  # 2 images at 2 per step
