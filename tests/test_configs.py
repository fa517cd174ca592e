"""Recipes resolve to configs that mmdet builds and trains; run ids are content hashes."""

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from steps import predict_one, train_step

from seesaw_repro.execution.runs import plan
from seesaw_repro.paper import configs, methods
from seesaw_repro.paper.recipes import load_table

register_all_modules()


def test_table2_has_six_distinct_runs_with_the_papers_switches():
    table = load_table("table2")
    assert [row.key for row in table.rows] == ["ce", "mf", "cf", "mf_cf", "nla", "mf_cf_nla"]
    runs = plan(table, "tiny")
    assert len(runs) == 6
    heads = {run.rows[0]: run.config["model"]["roi_head"]["bbox_head"] for run in runs}
    assert heads["table02:ce"]["loss_cls"]["p"] == 0 and heads["table02:ce"]["loss_cls"]["q"] == 0
    assert heads["table02:mf"]["loss_cls"]["p"] == 0.8 and heads["table02:mf"]["loss_cls"]["q"] == 0
    assert heads["table02:cf"]["loss_cls"]["p"] == 0 and heads["table02:cf"]["loss_cls"]["q"] == 2.0
    assert "cls_predictor_cfg" not in heads["table02:mf_cf"]
    assert heads["table02:mf_cf_nla"]["cls_predictor_cfg"]["tempearture"] == 20.0
    sampler = runs[0].config["train_dataloader"]["dataset"]
    assert sampler["type"] == "ClassBalancedDataset"


def test_rows_that_resolve_to_one_config_are_one_run():
    table = load_table("table2")
    twice = type(table)(table.name, table.title, table.caption, table.columns, table.rows * 2)
    runs = plan(twice, "tiny")
    assert len(runs) == 6
    assert all(len(run.rows) == 2 for run in runs)


def test_unused_hyper_parameters_do_not_change_the_run():
    a = configs.resolve(methods.RunSpec(mitigation=False, p=0.8, nla=False, tau=20), "tiny")
    b = configs.resolve(methods.RunSpec(mitigation=False, p=0.3, nla=False, tau=5), "tiny")
    assert configs.run_id(a) == configs.run_id(b)
    c = configs.resolve(methods.RunSpec(mitigation=True, p=0.3), "tiny")
    assert configs.run_id(a) != configs.run_id(c)


def test_paths_are_not_part_of_the_run_id(tmp_path):
    config = configs.resolve(methods.RunSpec(), "tiny")
    first = configs.materialise(config, tmp_path / "a", tmp_path / "w1")
    second = configs.materialise(config, tmp_path / "b", tmp_path / "w2")
    assert first.train_dataloader.dataset.dataset.data_root == str(tmp_path / "a")
    assert first.val_evaluator.ann_file == f"{tmp_path / 'a'}/annotations/lvis_v1_val.json"
    assert methods.DATA_ROOT not in first.pretty_text
    assert second.work_dir == str(tmp_path / "w2")
    assert configs.run_id(config) == configs.run_id(configs.resolve(methods.RunSpec(), "tiny"))


def test_every_table2_model_builds_and_takes_a_training_step(quick_data):
    for run in plan(load_table("table2"), "tiny"):
        cfg = configs.materialise(run.config, quick_data, quick_data / "unused")
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        total, _ = train_step(model, cfg)
        assert torch.isfinite(total)
        assert model.roi_head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
        assert model.roi_head.bbox_head.fc_cls.out_features == 30 + 2  # C classes + objectness


def test_norm_mask_is_a_normalized_1x1_conv_with_tau(quick_data):
    config = configs.resolve(methods.RunSpec(norm_mask=True, tau=20.0), "tiny")
    cfg = configs.materialise(config, quick_data, quick_data / "unused")
    model = MODELS.build(cfg.model)
    conv = model.roi_head.mask_head.conv_logits
    x = torch.randn(2, conv.in_channels, 5, 5)
    w = torch.nn.functional.normalize(conv.weight[:, :, 0, 0], dim=1)
    expected = 20.0 * torch.einsum("oc,nchw->nohw", w, torch.nn.functional.normalize(x, dim=1))
    expected = expected + conv.bias[None, :, None, None]
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-4)
    plain = configs.resolve(methods.RunSpec(), "tiny")
    assert "predictor_cfg" not in plain["model"]["roi_head"]["mask_head"]
    assert configs.run_id(plain) != configs.run_id(config)


def test_no_objectness_and_dataset_counts_build_and_train(quick_data):
    import json

    spec = methods.RunSpec(objectness=False, counts="dataset")
    cfg = configs.materialise(configs.resolve(spec, "tiny"), quick_data, quick_data / "unused")
    model = MODELS.build(cfg.model)
    head = model.roi_head.bbox_head
    assert head.fc_cls.out_features == 30 + 1  # C classes + background, one softmax
    train = json.loads((quick_data / "annotations" / "lvis_v1_train.json").read_text())
    counts = [c["instance_count"] for c in sorted(train["categories"], key=lambda c: c["id"])]
    assert head.loss_cls.cum_samples[:30].tolist() == counts
    total, _ = train_step(model, cfg)
    assert torch.isfinite(total)
    assert head.loss_cls.cum_samples[:30].tolist() == counts  # fixed: not accumulated


def test_eql_mask_rcnn_trains_and_predicts(quick_data):
    cfg = configs.materialise(
        configs.resolve(methods.RunSpec(loss="eql"), "tiny"), quick_data, quick_data / "unused"
    )
    model = MODELS.build(cfg.model)
    total, log_vars = train_step(model, cfg)
    assert torch.isfinite(total) and "acc_classes" in log_vars
    result = predict_one(model, cfg)
    labels = result.pred_instances.labels
    assert labels.numel() > 0 and int(labels.max()) < 30


def test_cascade_mask_rcnn_has_seesaw_in_all_three_stages_and_trains(quick_data):
    spec = methods.RunSpec(model="cascade_mask_rcnn", norm_mask=True)
    cfg = configs.materialise(configs.resolve(spec, "tiny"), quick_data, quick_data / "unused")
    model = MODELS.build(cfg.model)
    heads = model.roi_head.bbox_head
    assert len(heads) == 3
    assert all(type(h.loss_cls).__name__ == "ReproSeesawLoss" for h in heads)
    assert all(type(h.fc_cls).__name__ == "NormedLinear" for h in heads)
    assert all(type(m.conv_logits).__name__ == "NormedConv2d" for m in model.roi_head.mask_head)
    ious = [stage["assigner"]["pos_iou_thr"] for stage in cfg.model.train_cfg.rcnn]
    assert ious == [0.5, 0.6, 0.7]
    total, log_vars = train_step(model, cfg)
    assert torch.isfinite(total)
    assert {"s0.loss_cls_classes", "s2.loss_cls_objectness", "s2.loss_mask"} <= set(log_vars)
    result = predict_one(model, cfg)
    assert len(result.pred_instances) > 0
    assert result.pred_instances.masks.shape[-2:] == (128, 128)


def test_a_switch_must_be_a_boolean():
    with pytest.raises(methods.SpecError, match="nla must be true or false"):
        methods.RunSpec(nla="yes")
    with pytest.raises(methods.SpecError, match="counts = 'oracle'"):
        methods.RunSpec(counts="oracle")
