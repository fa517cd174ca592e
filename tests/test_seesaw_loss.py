"""The Seesaw loss as the suite configures it (ReproSeesawLoss, built from our config)
against the paper's formulas, computed by hand here."""

import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from seesaw_repro.paper.methods import RunSpec, bbox_head_method

register_all_modules()
C = 6


def build(**spec):
    head = bbox_head_method(RunSpec(**spec), C, tail_fraction=1e-3)
    return MODELS.build(head["loss_cls"]), head


def random_batch(seed=0, n=40):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C + 2, generator=gen) * 2
    labels = torch.randint(0, C + 1, (n,), generator=gen)  # label C is background
    labels[:C] = torch.arange(C)  # every class is present
    return logits.requires_grad_(), labels


def hand_seesaw_weights(logits, labels, counts, p, q, eps=1e-2):
    """S_ij = M_ij * C_ij of Eq. 6-8 for each positive sample i (row) and class j.

    mmdet divides by max(sigma_i, eps) in Eq. 8 so that C_ij stays finite when sigma_i -> 0.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    probs = F.softmax(logits.detach().double(), dim=1)
    weights = torch.ones(len(labels), C, dtype=torch.float64)
    for row, i in enumerate(labels.tolist()):
        for j in range(C):
            if j == i:
                continue
            m = (n[j] / n[i]) ** p if n[i] > n[j] else 1.0
            sigma_i = max(probs[row, i].item(), eps)
            c = (probs[row, j] / sigma_i) ** q if probs[row, j] > sigma_i else 1.0
            weights[row, j] = m * c
    return weights


@pytest.mark.parametrize("mitigation,compensation", [(True, True), (True, False), (False, True)])
def test_gradient_on_negative_classes_is_eq5(mitigation, compensation):
    loss_fn, _ = build(mitigation=mitigation, compensation=compensation)
    prior = torch.tensor([500.0, 200, 50, 10, 3, 1, 0])  # cumulative counts, last = background
    loss_fn.cum_samples.copy_(prior)
    logits, labels = random_batch()
    loss = loss_fn(logits, labels, reduction_override="sum")["loss_cls_classes"]
    loss.backward()

    # The loss counts this batch before it weighs it (online accumulation, Sec. 3.2).
    counts = prior + torch.bincount(labels, minlength=C + 1)
    pos = labels < C
    z = logits.detach()[pos, :C].double()
    lab = labels[pos]
    s = hand_seesaw_weights(
        z, lab, counts[:C], 0.8 if mitigation else 0, 2.0 if compensation else 0
    )
    e = z.exp()
    e_i = e.gather(1, lab[:, None])
    sigma_hat_i = e_i / ((s * e).sum(1, keepdim=True) - s.gather(1, lab[:, None]) * e_i + e_i)
    expected = s * e / e_i * sigma_hat_i  # Eq. 5, for every j != i
    got = logits.grad[pos, :C].double()
    negative = torch.ones_like(got, dtype=torch.bool)
    negative[torch.arange(len(lab)), lab] = False
    torch.testing.assert_close(got[negative], expected[negative], rtol=1e-5, atol=1e-7)
    # and on the positive class, sigma_hat_i - 1 (Eq. 4 differentiated)
    torch.testing.assert_close(got[~negative], (sigma_hat_i[:, 0] - 1), rtol=1e-5, atol=1e-7)
    assert counts.tolist() == loss_fn.cum_samples.tolist()


def test_mitigation_lowers_only_the_penalty_of_rarer_classes():
    loss_fn, _ = build(compensation=False)
    loss_fn.cum_samples.copy_(torch.tensor([1000.0, 100, 10, 10, 10, 10, 0]))
    plain, _ = build(mitigation=False, compensation=False)
    logits = torch.zeros(1, C + 2, requires_grad=True)
    label = torch.tensor([0])  # a sample of the head class
    loss_fn(logits, label, reduction_override="sum")["loss_cls_classes"].backward()
    seesaw_grad = logits.grad[0, 1:C].clone()
    logits.grad = None
    plain(logits, label, reduction_override="sum")["loss_cls_classes"].backward()
    assert (seesaw_grad < logits.grad[0, 1:C]).all()
    # a sample of the rarest class (10 once counted) keeps its full penalty on every class
    # (N_i <= N_j: M_ij = 1): its gradient is CE's
    loss_fn.cum_samples.copy_(torch.tensor([1000.0, 100, 10, 10, 10, 9, 0]))
    tail = torch.tensor([5])
    logits.grad = None
    loss_fn(logits, tail, reduction_override="sum")["loss_cls_classes"].backward()
    seesaw_grad = logits.grad[0, :C].clone()
    logits.grad = None
    plain(logits, tail, reduction_override="sum")["loss_cls_classes"].backward()
    torch.testing.assert_close(seesaw_grad, logits.grad[0, :C])
    assert seesaw_grad[0] > 0


def test_without_both_factors_it_is_cross_entropy_plus_objectness():
    loss_fn, head = build(mitigation=False, compensation=False)
    assert head["loss_cls"]["p"] == 0 and head["loss_cls"]["q"] == 0
    logits, labels = random_batch(seed=3)
    out = loss_fn(logits, labels)
    pos = labels < C
    classes = F.cross_entropy(logits[pos, :C], labels[pos])  # mean over foreground samples
    objectness = F.cross_entropy(logits[:, C:], (labels == C).long())
    torch.testing.assert_close(out["loss_cls_classes"], classes)
    torch.testing.assert_close(out["loss_cls_objectness"], objectness)


def test_detection_score_is_class_softmax_times_objectness():
    loss_fn, _ = build()
    logits, _ = random_batch(seed=5)
    scores = loss_fn.get_activation(logits.detach())
    expected = F.softmax(logits[:, :C], 1) * F.softmax(logits[:, C:], 1)[:, :1]
    torch.testing.assert_close(scores[:, :C], expected.detach())


def test_normalized_linear_activation_is_tau_times_cosine():
    _, head = build(nla=True, tau=20.0)
    layer = MODELS.build({**head["cls_predictor_cfg"], "in_features": 16, "out_features": C + 2})
    x = torch.randn(5, 16)
    expected = 20.0 * F.normalize(x, dim=1) @ F.normalize(layer.weight, dim=1).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    _, plain_head = build(nla=False)
    assert "cls_predictor_cfg" not in plain_head
