"""The suite's own Seesaw loss: equal to mmdet's where mmdet has the variant, and to the
paper's formulas where it does not (no objectness, fixed counts)."""

import json

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.losses import SeesawLoss

from seesaw_repro.models.losses import ReproSeesawLoss

C = 7


def _batch(seed, n=64, classes=C, extra=2):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, classes + extra, generator=gen) * 3).double()
    labels = torch.randint(0, classes + 1, (n,), generator=gen)
    weights = (torch.rand(n, generator=gen) > 0.1).double()
    return logits, labels, weights


@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (0.0, 0.0), (1.2, 0.5)])
@pytest.mark.parametrize("avg_factor", [None, 50.0])
def test_equals_mmdet_seesaw_loss_value_and_gradient(p, q, avg_factor):
    ours = ReproSeesawLoss(num_classes=C, p=p, q=q).double()
    theirs = SeesawLoss(num_classes=C, p=p, q=q).double()
    prior = torch.tensor([900.0, 300, 80, 20, 5, 2, 0, 4000]).double()
    for seed in range(3):  # three steps: the online counts evolve alike
        if seed == 0:
            ours.cum_samples.copy_(prior)
            theirs.cum_samples.copy_(prior)
        base, labels, weights = _batch(seed)
        results = []
        for loss_fn in (ours, theirs):
            logits = base.clone().requires_grad_()
            out = loss_fn(logits, labels, weights, avg_factor=avg_factor)
            sum(out.values()).backward()
            results.append((out, logits.grad))
        (a, grad_a), (b, grad_b) = results
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.cum_samples, theirs.cum_samples)
        assert ours.get_accuracy(base, labels).keys() == theirs.get_accuracy(base, labels).keys()
        torch.testing.assert_close(ours.get_activation(base), theirs.get_activation(base))


def test_without_objectness_and_factors_it_is_softmax_cross_entropy():
    loss_fn = ReproSeesawLoss(num_classes=C, p=0, q=0, objectness=False)
    assert loss_fn.get_cls_channels(C) == C + 1
    logits, labels, _ = _batch(1, extra=1)
    torch.testing.assert_close(loss_fn(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(loss_fn.get_activation(logits), F.softmax(logits, -1))


def test_without_objectness_background_is_mitigated_like_a_class():
    # Sec. 3.3: background is the most frequent class, so Seesaw shrinks its penalty on every
    # foreground class when a background RoI is seen.
    loss_fn = ReproSeesawLoss(num_classes=C, p=0.8, q=0, objectness=False)
    loss_fn.cum_samples.copy_(torch.tensor([10.0] * C + [10_000.0]))
    logits = torch.zeros(1, C + 1, requires_grad=True)
    loss_fn(logits, torch.tensor([C]), reduction_override="sum").backward()
    plain = torch.full((C,), 1.0 / (C + 1))
    assert (logits.grad[0, :C] < plain).all()


def test_gradient_on_z_j_grows_with_s_ij_appendix_a():
    grads = []
    for n_j in (1.0, 10.0, 100.0, 1000.0):  # S_ij = (N_j / N_i)^p rises with N_j
        loss_fn = ReproSeesawLoss(num_classes=3, p=0.8, q=0)
        loss_fn.cum_samples.copy_(torch.tensor([999.0, n_j, 50.0, 0.0]))  # one more i is counted
        logits = torch.tensor([[0.3, 0.1, -0.2, 0.0, 0.0]], requires_grad=True)
        loss_fn(logits, torch.tensor([0]))["loss_cls_classes"].backward()
        grads.append(logits.grad[0, 1].item())
    assert grads == sorted(grads) and grads[0] < grads[-1]


def test_online_counts_accumulate_fixed_sources_do_not(tmp_path):
    labels = torch.tensor([0, 0, 2, C, C, C])
    logits = torch.randn(len(labels), C + 2)
    online = ReproSeesawLoss(num_classes=C)
    online(logits, labels)
    online(logits, labels)
    assert online.cum_samples.tolist() == [4, 0, 2, 0, 0, 0, 0, 6]

    ann = tmp_path / "lvis_v1_train.json"
    cats = [{"id": i + 1, "instance_count": 10 * (i + 1)} for i in range(C)]
    ann.write_text(json.dumps({"categories": list(reversed(cats)), "images": []}))
    dataset = ReproSeesawLoss(num_classes=C, counts="dataset", ann_file=str(ann))
    dataset(logits, labels)
    assert dataset.cum_samples[:C].tolist() == [10.0 * (i + 1) for i in range(C)]

    ckpt = tmp_path / "iter_10.pth"
    torch.save(
        {"state_dict": {"roi_head.bbox_head.loss_cls.cum_samples": online.cum_samples}}, ckpt
    )
    recorded = ReproSeesawLoss(num_classes=C, counts="checkpoint", checkpoint=str(ckpt))
    recorded(logits, labels)
    assert recorded.cum_samples.tolist() == [4, 0, 2, 0, 0, 0, 0, 6]


def test_bad_counts_source_is_refused():
    with pytest.raises(ValueError, match="counts must be one of"):
        ReproSeesawLoss(num_classes=C, counts="oracle")
    with pytest.raises(ValueError, match="needs ann_file"):
        ReproSeesawLoss(num_classes=C, counts="dataset")


@pytest.mark.parametrize("objectness", [True, False])
def test_hand_written_backward_passes_gradcheck(objectness):
    # With fixed counts and q = 0 the weights do not depend on the logits, so the loss is a
    # smooth function of them and its numerical gradient must equal the hand-written one.
    from seesaw_repro.models.losses import _SeesawCrossEntropy

    logits, labels, _ = _batch(4, n=12, extra=2 if objectness else 1)
    log_counts = torch.log(torch.tensor([900.0, 300, 80, 20, 5, 2, 1] + [50.0] * 1)).double()
    log_counts = log_counts if not objectness else log_counts[:C]

    def losses(x):
        return _SeesawCrossEntropy.apply(x, labels, log_counts, C, objectness, 0.8, 0.0, 1e-2)

    assert torch.autograd.gradcheck(losses, (logits.requires_grad_(),))


def test_a_batch_without_foreground_gives_zero_class_loss_and_gradient():
    loss_fn = ReproSeesawLoss(num_classes=C)
    logits = torch.randn(5, C + 2, requires_grad=True)
    out = loss_fn(logits, torch.full((5,), C))
    assert out["loss_cls_classes"].item() == 0
    sum(out.values()).backward()
    assert (logits.grad[:, :C] == 0).all() and (logits.grad[:, C:] != 0).all()


def _count_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    loss_fn = ReproSeesawLoss(num_classes=C)
    labels = [torch.tensor([0, 0, 1, C]), torch.tensor([2, 3, 3, C, C])][rank]
    loss_fn(torch.randn(len(labels), C + 2), labels)
    torch.save(loss_fn.cum_samples, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_counts_are_summed_over_ranks_in_distributed_training(tmp_path):
    import torch.multiprocessing as mp

    args = (str(tmp_path / "init"), str(tmp_path))
    # spawn, not fork: a fork of a process whose OpenMP threads have run can deadlock.
    mp.start_processes(_count_on_rank, args=args, nprocs=2, start_method="spawn")
    everything = torch.bincount(torch.tensor([0, 0, 1, C, 2, 3, 3, C, C]), minlength=C + 1)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt").tolist() == everything.float().tolist()
