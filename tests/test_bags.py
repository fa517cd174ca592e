"""Balanced Group Softmax (Li et al., CVPR 2020) against its Sec. 3.2-3.3 computed by hand."""

import json

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from steps import predict_one, train_step

from seesaw_repro.models.losses import BalancedGroupSoftmaxLoss
from seesaw_repro.paper import configs, methods

register_all_modules()

# Instance counts 2000, 500, 50, 5, 3: one category in each of the bins [1000, inf),
# [100, 1000) and [10, 100), two in [1, 10).
COUNTS = [2000, 500, 50, 5, 3]
C = len(COUNTS)


@pytest.fixture
def ann_file(tmp_path):
    cats = [{"id": i + 1, "instance_count": n} for i, n in enumerate(COUNTS)]
    path = tmp_path / "lvis_v1_train.json"
    path.write_text(json.dumps({"categories": cats, "images": [{"id": 1}]}))
    return str(path)


def test_groups_follow_instance_count_bins_and_empty_bins_are_dropped(ann_file, tmp_path):
    loss_fn = BalancedGroupSoftmaxLoss(num_classes=C, ann_file=ann_file)
    members = [loss_fn.group(n)[0].tolist() for n in range(loss_fn.num_groups)]
    assert members == [[3, 4], [2], [1], [0]]  # rarest group first
    assert loss_fn.group(0)[1].tolist() == [C + 0, 3, 4]  # "others" first
    assert loss_fn.get_cls_channels(C) == C + 4 + 2
    no_head = tmp_path / "no_head.json"
    cats = [{"id": i + 1, "instance_count": n} for i, n in enumerate([500, 50, 5])]
    no_head.write_text(json.dumps({"categories": cats, "images": []}))
    loss_fn = BalancedGroupSoftmaxLoss(num_classes=3, ann_file=str(no_head))
    assert loss_fn.num_groups == 3 and loss_fn.get_cls_channels(3) == 3 + 3 + 2


def _log_softmax(row: torch.Tensor, columns: list[int], target: int) -> torch.Tensor:
    z = row[columns]
    return z[target] - torch.logsumexp(z, dim=0)


def test_loss_is_a_sum_of_group_softmax_losses(ann_file):
    # others_ratio large enough that every RoI outside a group is sampled as its "others".
    loss_fn = BalancedGroupSoftmaxLoss(num_classes=C, ann_file=ann_file, others_ratio=100.0)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, C + 6, generator=gen, dtype=torch.double)
    labels = torch.tensor([0, 3, 4, C, C])  # head, two rare, two background
    fg, bg = C + 4, C + 5
    expected = (
        -sum(_log_softmax(logits[r], [fg, bg], int(labels[r] == C)) for r in range(5)) / 5
    )  # group 0: every RoI
    rare = [C + 0, 3, 4]  # target index: 1 + position in the group, 0 = others
    expected -= sum(_log_softmax(logits[r], rare, t) for r, t in enumerate([0, 1, 2, 0, 0])) / 5
    head = [C + 3, 0]
    expected -= sum(_log_softmax(logits[r], head, t) for r, t in enumerate([1, 0, 0, 0, 0])) / 5
    # the groups of categories 1 and 2 have no RoI of their own in this batch: left out
    torch.testing.assert_close(loss_fn(logits, labels), expected)


def test_others_are_sampled_at_most_ratio_times_the_own_rois(ann_file):
    loss_fn = BalancedGroupSoftmaxLoss(num_classes=C, ann_file=ann_file, others_ratio=2.0)
    own = torch.tensor([True] + [False] * 9)
    for _ in range(20):
        weight = loss_fn._sample_others(own)
        assert weight[0] == 1 and int(weight.sum()) == 1 + 2
    logits = torch.zeros(10, C + 6, requires_grad=True)
    labels = torch.tensor([0] + [C] * 9)
    loss_fn(logits, labels).backward()
    head_others = logits.grad[:, C + 3]  # the head group's "others" logit
    # the head RoI itself and the two background RoIs sampled as its group's "others"
    assert head_others[0] != 0 and int((head_others[1:] != 0).sum()) == 2


def test_scores_are_group_softmax_times_foreground_probability(ann_file):
    loss_fn = BalancedGroupSoftmaxLoss(num_classes=C, ann_file=ann_file)
    logits = torch.randn(4, C + 6, dtype=torch.double)
    scores = loss_fn.get_activation(logits)
    assert scores.shape == (4, C + 1)
    p_fg = torch.softmax(logits[:, [C + 4, C + 5]], dim=1)
    torch.testing.assert_close(scores[:, C], p_fg[:, 1])
    rare = torch.softmax(logits[:, [C + 0, 3, 4]], dim=1)
    torch.testing.assert_close(scores[:, 3], rare[:, 1] * p_fg[:, 0])
    torch.testing.assert_close(scores[:, 4], rare[:, 2] * p_fg[:, 0])
    head = torch.softmax(logits[:, [C + 3, 0]], dim=1)
    torch.testing.assert_close(scores[:, 0], head[:, 1] * p_fg[:, 0])


@pytest.mark.parametrize("model", ["mask_rcnn", "cascade_mask_rcnn"])
def test_bags_with_nla_trains_and_predicts(quick_data, model):
    spec = methods.RunSpec(model=model, loss="bags", nla=True)
    cfg = configs.materialise(configs.resolve(spec, "tiny"), quick_data, quick_data / "unused")
    detector = MODELS.build(cfg.model)
    heads = detector.roi_head.bbox_head
    heads = heads if isinstance(heads, torch.nn.ModuleList) else [heads]
    assert all(type(h.loss_cls).__name__ == "BalancedGroupSoftmaxLoss" for h in heads)
    assert all(type(h.fc_cls).__name__ == "NormedLinear" for h in heads)
    num_groups = heads[0].loss_cls.num_groups
    assert heads[0].fc_cls.out_features == 30 + num_groups + 2
    total, log_vars = train_step(detector, cfg)
    assert torch.isfinite(total)
    assert heads[-1].fc_cls.weight.grad.abs().sum() > 0
    result = predict_one(detector, cfg)
    labels = result.pred_instances.labels
    assert labels.numel() > 0 and int(labels.max()) < 30
