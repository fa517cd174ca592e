"""Tables 10-11's parts on hand-computed cases: the losses, the decoupled heads, the shot-group
accuracy, the class-balanced sampler, and the ImageNet-LT layout checks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seesaw_repro.data import imagenet_lt
from seesaw_repro.errors import UserError
from seesaw_repro.models import classification as cls


def _split_file(tmp_path, counts):
    lines = [f"train/{c}/{k}.png {c}" for c, n in enumerate(counts) for k in range(n)]
    path = tmp_path / "ImageNet_LT_train.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_focal_loss_on_a_hand_case():
    # p = 0.5 for both classes: each term is (1 - 0.5)^2 * log 2
    loss = cls.LongTailFocalLoss(gamma=2.0)(torch.zeros(1, 2), torch.tensor([0]))
    assert loss.item() == pytest.approx(2 * 0.25 * math.log(2))


def test_class_balanced_weights_on_a_hand_case(tmp_path):
    loss = cls.LongTailFocalLoss(
        beta=0.9, split_file=_split_file(tmp_path, [100, 10, 1]), num_classes=3
    )
    effective = np.array([0.1 / (1 - 0.9**100), 0.1 / (1 - 0.9**10), 0.1 / (1 - 0.9)])
    assert loss.weights.numpy() == pytest.approx(effective / effective.sum() * 3, rel=1e-6)
    # the weight of the label's class scales its sample's focal loss
    plain = cls.LongTailFocalLoss()(torch.zeros(1, 3), torch.tensor([2]))
    assert loss(torch.zeros(1, 3), torch.tensor([2])).item() == pytest.approx(
        float(loss.weights[2]) * plain.item(), rel=1e-6
    )


def _model(head, classes=2, features=2):
    model = cls.LongTailClassifier(
        backbone={"type": "DigitsCNN", "channels": (4,)},
        feat_dim=features,
        num_classes=classes,
        loss={"type": "CrossEntropyLoss"},
        head=head,
    )
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        model.classifier.bias.copy_(torch.tensor([1.0, -1.0]))
    return model


def test_tau_norm_divides_each_class_weight_by_its_norm_to_the_tau():
    model, f = _model("tau_norm"), torch.tensor([[1.0, 1.0]])
    for tau, expected in ((0.0, [7.0, 2.0]), (1.0, [1.4, 1.0]), (0.5, [7 / 5**0.5, 2 / 2**0.5])):
        model.tau.fill_(tau)
        assert model.logits(f)[0].tolist() == pytest.approx(expected)  # no bias


def test_lws_scales_each_class_score():
    model = _model("lws")
    with torch.no_grad():
        model.scales.copy_(torch.tensor([0.5, 3.0]))
    assert model.logits(torch.tensor([[1.0, 1.0]]))[0].tolist() == pytest.approx([4.0, 3.0])


def test_ncm_scores_are_cosines_to_the_class_means():
    model = _model("ncm")
    model.class_means.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    scores = model.logits(torch.tensor([[2.0, 0.2], [0.1, 3.0]]))
    expected = [[2 / math.hypot(2, 0.2), 2.2 / math.hypot(2, 0.2) / 2**0.5]]
    expected += [[0.1 / math.hypot(0.1, 3), 3.1 / math.hypot(0.1, 3) / 2**0.5]]
    assert scores.tolist() == [pytest.approx(row) for row in expected]
    assert scores.argmax(1).tolist() == [0, 1]  # the nearest class mean


def test_seesaw_without_factors_is_cross_entropy_and_its_gradient_is_eq5():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 0, 0, 1, 2, 3])
    plain = cls.SeesawClassificationLoss(4, p=0.0, q=0.0)(logits, labels)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    loss = cls.SeesawClassificationLoss(4, p=0.8, q=1.0)
    value = loss(logits, labels)
    assert loss.cum_samples.tolist() == [3, 1, 1, 1]
    value.backward()
    # Eq. 5: d/dz = (sigma-hat - onehot) / N, sigma-hat the softmax of z + log S
    z, n = logits.detach(), loss.cum_samples
    i = labels
    mitigation = torch.clamp(n[None, :] / n[i][:, None], max=1) ** 0.8
    sigma = torch.softmax(z, 1)
    compensation = torch.clamp(sigma / sigma.gather(1, i[:, None]), min=1) ** 1.0
    s = mitigation * compensation
    s[torch.arange(6), i] = 1
    expected = (torch.softmax(z + s.log(), 1) - F.one_hot(i, 4)) / 6
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_equalization_loss_drops_the_tail_from_other_classes_softmax(tmp_path):
    split = _split_file(tmp_path, [50, 30, 5])  # class 2 is tail (< 20 images)
    loss = cls.SoftmaxEqualizationLoss(split, 3, gamma=1.0)
    # a head sample: the tail logit leaves its softmax
    assert loss(torch.zeros(1, 3), torch.tensor([0])).item() == pytest.approx(math.log(2))
    # a tail sample keeps its own logit
    assert loss(torch.zeros(1, 3), torch.tensor([2])).item() == pytest.approx(math.log(3))
    kept = cls.SoftmaxEqualizationLoss(split, 3, gamma=0.0)
    assert kept(torch.zeros(1, 3), torch.tensor([0])).item() == pytest.approx(math.log(3))


def test_shot_group_accuracy_on_a_hand_case(tmp_path):
    split = _split_file(tmp_path, [150, 50, 5])  # many, medium, few
    metric = cls.ShotGroupAccuracy(split, 3)
    found = metric.compute_metrics([(0, 0), (1, 0), (1, 1), (1, 2), (2, 2), (0, 2)])
    assert found == pytest.approx({"top1": 3 / 6, "many": 1 / 2, "medium": 1.0, "few": 1 / 3})
    assert imagenet_lt.shot_group(np.array([101, 100, 20, 19])).tolist() == [
        "many",
        "medium",
        "medium",
        "few",
    ]


def test_class_balanced_sampler_draws_classes_uniformly_and_repeatably():
    class Data:
        labels = np.array([0] * 900 + [1] * 90 + [2] * 10)

    sampler = cls.ClassBalancedSampler(Data(), seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == 1000 and first == list(sampler)
    shares = np.bincount(Data.labels[first], minlength=3) / 1000
    assert shares == pytest.approx([1 / 3] * 3, abs=0.05)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_the_digits_are_long_tailed_with_every_shot_group():
    counts = imagenet_lt.DigitsLTSpec().train_counts()
    assert counts.max() / counts.min() >= 50
    assert set(imagenet_lt.shot_group(counts)) == {"many", "medium", "few"}


def test_imagenet_lt_check_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="ImageNet_LT_train.txt"):
        imagenet_lt.check(tmp_path, 3)
    for split in imagenet_lt.SPLITS:
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text(f"{split}/a.JPEG 1\n")
    with pytest.raises(UserError, match=r"1 of the 1 images .* missing .* train/a.JPEG"):
        imagenet_lt.check(tmp_path, 3)
    for split in imagenet_lt.SPLITS:
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.JPEG").write_bytes(b"")
    imagenet_lt.check(tmp_path, 3)
    with pytest.raises(UserError, match="lists 1 images, ImageNet-LT's lists 115846"):
        imagenet_lt.check(tmp_path, 3, imagenet_lt.SPLIT_LINES)
    (tmp_path / "ImageNet_LT_val.txt").write_text("val/a.JPEG one\n")
    with pytest.raises(UserError, match="line 1: .* not 'relative/path label'"):
        imagenet_lt.check(tmp_path, 3)


def test_a_tiny_data_root_that_is_not_the_generated_digits_is_refused(tmp_path):
    for split in imagenet_lt.SPLITS:
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text("")
    with pytest.raises(UserError, match="not the tiny preset's digits"):
        imagenet_lt.check_digits(tmp_path, imagenet_lt.DigitsLTSpec())
