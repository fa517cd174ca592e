"""Equalization Loss (Tan et al., CVPR 2020) against its Eq. 3-5 computed by hand."""

import json

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from seesaw_repro.models.losses import EqualizationLoss
from seesaw_repro.paper import configs, methods

register_all_modules()

C = 4


@pytest.fixture
def ann_file(tmp_path):
    # image counts 90, 30, 3, 1 of 100 images: with lambda = 0.05 classes 2 and 3 are tail
    cats = [{"id": i + 1, "image_count": n} for i, n in enumerate([90, 30, 3, 1])]
    path = tmp_path / "lvis_v1_train.json"
    path.write_text(json.dumps({"categories": cats, "images": [{"id": i} for i in range(100)]}))
    return str(path)


def test_loss_is_eq3_with_tail_negatives_dropped_for_foreground(ann_file):
    loss_fn = EqualizationLoss(num_classes=C, ann_file=ann_file, lambda_=0.05)
    assert loss_fn.tail.tolist() == [0, 0, 1, 1]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, C, generator=gen, dtype=torch.double)
    labels = torch.tensor([0, 1, 2, 3, C, C])
    p = torch.sigmoid(logits)
    expected = 0.0
    for row, label in enumerate(labels.tolist()):
        for j in range(C):
            y = 1.0 if j == label else 0.0
            foreground = label < C
            w = 1.0 - (1.0 if foreground else 0.0) * float(j >= 2) * (1 - y)
            expected -= w * (y * torch.log(p[row, j]) + (1 - y) * torch.log(1 - p[row, j]))
    torch.testing.assert_close(loss_fn(logits, labels), expected / len(labels))


def test_foreground_rois_send_no_negative_gradient_to_tail_classes(ann_file):
    loss_fn = EqualizationLoss(num_classes=C, ann_file=ann_file, lambda_=0.05)
    logits = torch.zeros(3, C, requires_grad=True)
    loss_fn(logits, torch.tensor([0, 2, C])).backward()
    grad = logits.grad
    assert grad[0, 2] == 0 and grad[0, 3] == 0  # a head-class RoI leaves the tail alone
    assert grad[0, 1] > 0  # but still suppresses the other head class
    assert grad[1, 2] < 0 and grad[1, 3] == 0  # its own class: positive gradient
    assert (grad[2] > 0).all()  # background suppresses every class, tail included
    scores = loss_fn.get_activation(logits.detach())
    assert scores.shape == (3, C + 1) and (scores[:, C] == 0).all()


def test_eql_rows_resolve_without_seesaw_fields(quick_data):
    a = configs.resolve(methods.RunSpec(loss="eql", p=0.1, objectness=False), "tiny")
    b = configs.resolve(methods.RunSpec(loss="eql"), "tiny")
    assert configs.run_id(a) == configs.run_id(b)
    head = a["model"]["roi_head"]["bbox_head"]
    assert head["loss_cls"]["type"] == "EqualizationLoss"
    assert head["loss_cls"]["lambda_"] == pytest.approx(100 / 600)
    cfg = configs.materialise(b, quick_data, quick_data / "unused")
    model = MODELS.build(cfg.model)
    assert model.roi_head.bbox_head.fc_cls.out_features == 30
    assert int(model.roi_head.bbox_head.loss_cls.tail.sum()) == sum(
        c["image_count"] < 100
        for c in json.loads((quick_data / "annotations/lvis_v1_train.json").read_text())[
            "categories"
        ]
    )
