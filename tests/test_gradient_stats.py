"""Figure 3's statistics: positive and negative gradient magnitudes per category."""

import json
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from torch import nn

from seesaw_repro.paper.methods import RunSpec, bbox_head_method
from seesaw_repro.training.hooks import GradientStatsHook

register_all_modules()
C = 5


def _model(**spec):
    head = {
        "type": "Shared2FCBBoxHead",
        "in_channels": 4,
        "fc_out_channels": 8,
        "roi_feat_size": 2,
        **bbox_head_method(RunSpec(**spec), C, tail_fraction=1e-3),
    }
    model = nn.Module()
    model.roi_head = nn.Module()
    model.roi_head.bbox_head = MODELS.build(head)
    return model


def _hand(grad, labels):
    magnitude = grad[:, :C].abs().double()
    positive, negative = torch.zeros(C, dtype=torch.double), torch.zeros(C, dtype=torch.double)
    for row, label in enumerate(labels.tolist()):
        for j in range(C):
            if j == label:
                positive[j] += magnitude[row, j]
            else:
                negative[j] += magnitude[row, j]
    return positive, negative


def test_sums_match_a_hand_split_of_the_logit_gradient_over_steps():
    model = _model()
    hook = GradientStatsHook()
    hook.before_train(SimpleNamespace(model=model))
    loss_cls = model.roi_head.bbox_head.loss_cls
    expected_pos, expected_neg = (
        torch.zeros(C, dtype=torch.double),
        torch.zeros(C, dtype=torch.double),
    )
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(30, C + 2, generator=gen, requires_grad=True)
        labels = torch.randint(0, C + 1, (30,), generator=gen)
        sum(loss_cls(logits, labels).values()).backward()
        positive, negative = _hand(logits.grad, labels)
        expected_pos += positive
        expected_neg += negative
    name = "roi_head.bbox_head.loss_cls"
    torch.testing.assert_close(hook.positive[name], expected_pos)
    torch.testing.assert_close(hook.negative[name], expected_neg)
    assert (hook.positive[name] > 0).all() and (hook.negative[name] > 0).all()


def test_no_gradient_no_count_and_checkpoint_round_trip(tmp_path):
    model = _model()
    hook = GradientStatsHook()
    hook.before_train(SimpleNamespace(model=model))
    with torch.no_grad():
        model.roi_head.bbox_head.loss_cls(torch.randn(4, C + 2), torch.tensor([0, 1, 2, C]))
    assert hook.positive == {}
    logits = torch.randn(4, C + 2, requires_grad=True)
    sum(model.roi_head.bbox_head.loss_cls(logits, torch.tensor([0, 1, 2, C])).values()).backward()
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    resumed = GradientStatsHook()
    resumed.after_load_checkpoint(None, checkpoint)
    assert resumed.totals()["positive"].keys() == hook.positive.keys()
    resumed.after_train(SimpleNamespace(work_dir=str(tmp_path), iter=1))
    saved = json.loads((tmp_path / "gradient_stats.json").read_text())
    assert (
        saved["heads"]["roi_head.bbox_head.loss_cls"]["positive"]
        == hook.positive["roi_head.bbox_head.loss_cls"].tolist()
    )


def _write_ann(tmp_path):
    cats = [
        {"id": i + 1, "instance_count": n, "image_count": n}
        for i, n in enumerate([2000, 300, 40, 5, 1])
    ]
    path = tmp_path / "lvis_v1_train.json"
    path.write_text(json.dumps({"categories": cats, "images": [{"id": i} for i in range(100)]}))
    return str(path)


@pytest.mark.parametrize("loss", ["EqualizationLoss", "BalancedGroupSoftmaxLoss"])
def test_eql_and_bags_class_logits_are_split_the_same_way(tmp_path, loss):
    extra = {"EqualizationLoss": {"lambda_": 0.05}, "BalancedGroupSoftmaxLoss": {}}[loss]
    loss_cls = MODELS.build(
        {"type": loss, "num_classes": C, "ann_file": _write_ann(tmp_path)} | extra
    )
    model = nn.Module()
    model.roi_head = nn.Module()
    model.roi_head.bbox_head = nn.Module()
    model.roi_head.bbox_head.loss_cls = loss_cls
    model.roi_head.bbox_head.num_classes = C
    hook = GradientStatsHook()
    hook.before_train(SimpleNamespace(model=model))
    logits = torch.randn(30, loss_cls.get_cls_channels(C), requires_grad=True)
    labels = torch.randint(0, C + 1, (30,))
    labels[:C] = torch.arange(C)
    loss_cls(logits, labels).backward()
    positive, negative = _hand(logits.grad, labels)
    name = "roi_head.bbox_head.loss_cls"
    torch.testing.assert_close(hook.positive[name], positive)
    torch.testing.assert_close(hook.negative[name], negative)
    assert (hook.positive[name] > 0).all()


def _totals_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    hook = GradientStatsHook()
    hook.heads = {"a": 3, "b": 2}
    hook.resumed = {  # what both ranks loaded from the checkpoint they resumed from
        "positive": {"a": torch.full((3,), 10.0, dtype=torch.double)},
        "negative": {"a": torch.full((3,), 20.0, dtype=torch.double)},
    }
    own = torch.tensor([1.0, 2.0, 3.0], dtype=torch.double) * (rank + 1)
    hook.positive = {"a": own, **({"b": torch.ones(2, dtype=torch.double)} if rank else {})}
    hook.negative = {"a": own * 2}  # head "b" had no gradient on either rank
    torch.save(hook.totals(), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_totals_sum_the_processes_and_the_resumed_checkpoint_once(tmp_path):
    import torch.multiprocessing as mp

    args = (str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_totals_on_rank, args=args, nprocs=2, start_method="spawn")
    for rank in range(2):  # every rank holds the same totals
        totals = torch.load(tmp_path / f"rank{rank}.pt")
        assert totals["positive"]["a"].tolist() == [13.0, 16.0, 19.0]  # 10 + (1 + 2) x
        assert totals["negative"]["a"].tolist() == [26.0, 32.0, 38.0]
        assert totals["positive"]["b"].tolist() == [1.0, 1.0]
        assert totals["negative"]["b"].tolist() == [0.0, 0.0]
