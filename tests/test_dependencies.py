"""Runs that need another run's checkpoint: decoupled fine-tunes (Table 9) and Pre-Record
counts (Table 4), planned, ordered and trained for real on the generated data."""

from pathlib import Path

import pytest
import torch

from seesaw_repro.compat import load_from_local_safely
from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan, server_results
from seesaw_repro.paper import configs, methods
from seesaw_repro.paper.recipes import Row, Table, load_table

DE_SEESAW = methods.RunSpec(decoupled="rfs", schedule="1x")
DE_EQL = methods.RunSpec(decoupled="rfs", schedule="1x", loss="eql", nla=False)
PRE_RECORD = methods.RunSpec(counts="checkpoint")
TEST_DEV = methods.RunSpec(split="test-dev")


def _table(**rows: methods.RunSpec) -> Table:
    return Table("test", "test", "", [], [Row(key, spec) for key, spec in rows.items()])


def test_a_decoupled_run_loads_the_ce_baseline_and_shares_it():
    runs = plan(_table(de_seesaw=DE_SEESAW, de_eql=DE_EQL), "tiny")
    assert len(runs) == 3
    pretrained, de_seesaw, de_eql = runs  # the needed run comes first
    assert de_seesaw.needs == de_eql.needs == (pretrained.run_id,)
    assert pretrained.rows == ("test:de_seesaw (pretrained)", "test:de_eql (pretrained)")
    # the pre-training is the CE baseline: Table 2's first row, the same run
    table2_ce = configs.run_id(configs.resolve(load_table("table2").rows[0].spec, "tiny"))
    assert pretrained.run_id == table2_ce
    assert de_seesaw.config["load_from"] == f"${{RUNS_DIR}}/{pretrained.run_id}/iter_800.pth"
    assert {"type": "ClassifierFinetuneHook"} in de_seesaw.config["custom_hooks"]
    assert de_seesaw.config["train_cfg"]["max_iters"] == 400  # fine-tuned 1x: half of 2x
    random = plan(_table(de=methods.RunSpec(decoupled="random", schedule="1x")), "tiny")
    assert random[0].run_id != pretrained.run_id
    assert random[0].spec.sampler == "random"


def test_pre_record_counts_come_from_the_online_run():
    online, pre_record = plan(_table(pre_record=PRE_RECORD), "tiny")
    assert online.spec == methods.RunSpec(counts="online")
    assert pre_record.needs == (online.run_id,)
    loss = pre_record.config["model"]["roi_head"]["bbox_head"]["loss_cls"]
    assert loss["counts"] == "checkpoint"
    assert loss["checkpoint"] == f"${{RUNS_DIR}}/{online.run_id}/iter_800.pth"
    materialised = configs.materialise(pre_record.config, Path("/data"), Path("/w/runs/x"))
    checkpoint = materialised.model.roi_head.bbox_head.loss_cls.checkpoint
    assert checkpoint == f"/w/runs/{online.run_id}/iter_800.pth"


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_from_local_safely(str(path), map_location="cpu")["state_dict"]


@pytest.mark.slow
def test_fine_tune_changes_only_the_classifier_and_pre_record_loads_counts(
    tmp_path, quick_data, with_quick_preset
):
    table = _table(de_seesaw=DE_SEESAW, pre_record=PRE_RECORD)
    runs = plan(table, with_quick_preset.name)
    states = run_local(runs, tmp_path, quick_data, jobs=2)
    assert set(states.values()) == {"done"}, states
    pretrained, de_seesaw, online, pre_record = runs
    iters = with_quick_preset.iters_2x
    before = _state(RunDir(tmp_path, pretrained.run_id).path / f"iter_{iters}.pth")
    after = _state(RunDir(tmp_path, de_seesaw.run_id).path / f"iter_{iters // 2}.pth")
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    classifier = {
        "roi_head.bbox_head.fc_cls.weight",
        "roi_head.bbox_head.fc_cls.bias",
        "roi_head.bbox_head.loss_cls.cum_samples",
    }
    assert changed == classifier  # BatchNorm statistics included: all else is pre-trained
    assert before["roi_head.bbox_head.fc_cls.weight"].shape[0] == 30 + 2
    # the fine-tune counted its own RoIs from zero, not on top of the pre-training's
    assert after["roi_head.bbox_head.loss_cls.cum_samples"].sum() < (
        before["roi_head.bbox_head.loss_cls.cum_samples"].sum()
    )
    recorded = _state(RunDir(tmp_path, online.run_id).path / f"iter_{iters}.pth")
    final = _state(RunDir(tmp_path, pre_record.run_id).path / f"iter_{iters}.pth")
    key = "roi_head.bbox_head.loss_cls.cum_samples"
    assert recorded[key].sum() > 0
    assert torch.equal(final[key], recorded[key])  # loaded, and fixed during training


@pytest.mark.slow
def test_a_run_whose_needed_run_fails_fails_without_starting(
    tmp_path, quick_data, with_quick_preset
):
    pretrained, de_seesaw = plan(_table(de_seesaw=DE_SEESAW), with_quick_preset.name)
    broken = pretrained.config | {"model": {"type": "NoSuchDetector"}}
    pretrained = type(pretrained)(**{**pretrained.__dict__, "config": broken})
    states = run_local([pretrained, de_seesaw], tmp_path, quick_data)
    assert states == {pretrained.run_id: "failed", de_seesaw.run_id: "failed"}
    status = RunDir(tmp_path, de_seesaw.run_id).status()
    assert "did not finish" in status["reason"] and "pid" not in status
    assert not RunDir(tmp_path, de_seesaw.run_id).log_file.exists()


def test_the_fine_tune_drops_the_classifier_only_from_the_pretrained_model():
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from seesaw_repro.training.hooks import ClassifierFinetuneHook

    hook = ClassifierFinetuneHook()
    runner = SimpleNamespace(logger=MMLogger.get_instance("test"))
    keys = [
        "backbone.conv1.weight",
        "roi_head.bbox_head.0.fc_cls.weight",
        "roi_head.bbox_head.0.fc_reg.weight",
        "roi_head.bbox_head.loss_cls.cum_samples",
        "roi_head.mask_head.conv_logits.weight",
    ]
    pretrained = {"state_dict": dict.fromkeys(keys, torch.zeros(1))}
    hook.after_load_checkpoint(runner, pretrained)
    assert sorted(pretrained["state_dict"]) == [keys[0], keys[2], keys[4]]
    own = {"state_dict": dict.fromkeys(keys, torch.zeros(1))}
    hook.before_save_checkpoint(runner, own)
    hook.after_load_checkpoint(runner, own)  # resuming the fine-tune itself
    assert sorted(own["state_dict"]) == keys


@pytest.mark.slow
def test_a_test_dev_row_writes_the_servers_result_files_from_the_trained_model(
    tmp_path, quick_data, with_quick_preset
):
    import json

    trained, test_dev = plan(_table(test_dev=TEST_DEV), with_quick_preset.name)
    assert trained.spec == methods.RunSpec()  # the val row's run: trained once, used twice
    assert test_dev.needs == (trained.run_id,)
    assert run_local([trained, test_dev], tmp_path, quick_data) == dict.fromkeys(
        (trained.run_id, test_dev.run_id), "done"
    )
    run_dir = RunDir(tmp_path, test_dev.run_id)
    files = server_results(run_dir.result())
    assert [Path(f).name for f in files] == ["test-dev.bbox.json", "test-dev.segm.json"]
    detections = json.loads(Path(files[1]).read_text())
    info = json.loads((quick_data / "annotations/lvis_v1_image_info_test_dev.json").read_text())
    assert detections and {d["image_id"] for d in detections} <= {i["id"] for i in info["images"]}
    assert {"segmentation", "score", "category_id"} <= set(detections[0])
    assert not list(run_dir.path.glob("*.pth"))  # it trained nothing
