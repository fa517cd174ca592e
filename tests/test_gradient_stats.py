"""Figure 3's statistics: positive and negative gradient magnitudes per category."""

import json
from types import SimpleNamespace

import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from torch import nn

from seesaw_repro.configs import RunSpec, _bbox_head_method
from seesaw_repro.hooks import GradientStatsHook

register_all_modules()
C = 5


def _model(**spec):
    head = {
        "type": "Shared2FCBBoxHead",
        "in_channels": 4,
        "fc_out_channels": 8,
        "roi_feat_size": 2,
        **_bbox_head_method(RunSpec(**spec), C, tail_fraction=1e-3),
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
    assert resumed.positive.keys() == hook.positive.keys()
    resumed.after_train(SimpleNamespace(work_dir=str(tmp_path), iter=1))
    saved = json.loads((tmp_path / "gradient_stats.json").read_text())
    assert (
        saved["heads"]["roi_head.bbox_head.loss_cls"]["positive"]
        == hook.positive["roi_head.bbox_head.loss_cls"].tolist()
    )
