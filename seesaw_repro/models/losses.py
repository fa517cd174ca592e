"""The box-classifier losses the paper compares: Seesaw loss (Wang et al., CVPR 2021,
Sec. 3.2-3.3) with every variant it ablates, Equalization Loss and Balanced Group Softmax.

Seesaw is computed in log space: log S_ij = log M_ij + log C_ij is added to the negative
logits, so the softmax of the shifted logits is Eq. 4's sigma-hat, with no C x C matrix,
power or per-label Python loop (mmdet's SeesawLoss has all three), and its gradient is
written by hand (Eq. 5), in one buffer. benchmarks/loss_speed.py times it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmdet.models.losses.accuracy import accuracy
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor, nn

from seesaw_repro.compat import load_from_local_safely

COUNT_SOURCES = ("online", "dataset", "checkpoint")


def seesaw_logits(
    logits: Tensor, labels: Tensor, log_counts: Tensor, p: float, q: float, eps: float
) -> Tensor:
    """z_ij + log S_ij (Eq. 6-8), a new tensor, for rows (samples) with true class i = label.

    log M_ij = p min(0, log N_j - log N_i) (Eq. 7: below 1 only when N_i > N_j) and
    log C_ij = q max(0, z_j - t_i) with t_i = z_i + max(0, log eps - log sigma_i), i.e.
    (sigma_j / max(sigma_i, eps))^q when above 1 (Eq. 8; `eps` keeps C finite, as mmdet's).
    Both are 0 for j = i, so the shifted logit of the true class is z_i itself. `logits`
    are not differentiated through (the weights are constants in Eq. 5).
    """
    z = logits.detach()
    if q > 0:
        # log sigma_i from the fused log-softmax kernel (torch.logsumexp and exp are 2-3x
        # slower on CPU); its buffer then holds the result, saving an allocation.
        shifted = torch.log_softmax(z, dim=1)
        log_sigma_i = shifted.gather(1, labels[:, None])
        t = z.gather(1, labels[:, None]) + (math.log(eps) - log_sigma_i).clamp_(min=0)
        torch.sub(z, t, out=shifted).clamp_(min=0)
        torch.add(z, shifted, alpha=q, out=shifted)
    else:
        shifted = z.clone()
    if p > 0:
        mitigation = (log_counts[None, :] - log_counts[labels][:, None]).clamp_(max=0)
        shifted.add_(mitigation, alpha=p)
    return shifted


class _SeesawCrossEntropy(torch.autograd.Function):
    """Per-sample losses of ReproSeesawLoss, with the gradient written straight into one
    N x K buffer: -log sigma-hat_i (Eq. 4) on the class logits and, with objectness, the
    objectness cross-entropy. Its gradient is softmax(z + log S) - onehot (Eq. 5), so no
    autograd graph of the weighting, no slice or mask backward is needed (they made the
    loss several times slower than cross-entropy)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        cls_score: Tensor,
        labels: Tensor,
        log_counts: Tensor,
        num_classes: int,
        objectness: bool,
        p: float,
        q: float,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        if objectness:
            rows = torch.nonzero(labels < num_classes)[:, 0]
            # contiguous rows: every op after this is several times slower on a strided view
            z = cls_score[:, :num_classes].index_select(0, rows)
        else:
            rows, z = None, cls_score
        row_labels = labels if rows is None else labels[rows]
        shifted = seesaw_logits(z, row_labels, log_counts, p, q, eps)
        loss = -torch.log_softmax(shifted, dim=1).gather(1, row_labels[:, None])[:, 0]
        obj_probs = obj_target = None
        loss_objectness = cls_score.new_zeros(0)
        if objectness:
            loss = cls_score.new_zeros(len(labels)).index_copy_(0, rows, loss)
            obj_target = (labels == num_classes).long()
            obj_probs = torch.log_softmax(cls_score[:, num_classes:], dim=1)
            loss_objectness = -obj_probs.gather(1, obj_target[:, None])[:, 0]
            obj_probs.exp_()
        ctx.save_for_backward(shifted, row_labels, rows, obj_probs, obj_target)
        ctx.shape = cls_score.shape
        ctx.num_classes = num_classes
        return loss, loss_objectness

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_loss: Tensor, grad_objectness: Tensor
    ) -> tuple[Tensor | None, ...]:
        shifted, row_labels, rows, obj_probs, obj_target = ctx.saved_tensors
        c = ctx.num_classes
        row_grad = grad_loss if rows is None else grad_loss[rows]
        grad = torch.softmax(shifted, dim=1).mul_(row_grad[:, None])  # sigma-hat (Eq. 4)
        grad.scatter_add_(1, row_labels[:, None], -row_grad[:, None])
        if rows is not None:
            full = grad.new_zeros(ctx.shape)
            full[rows, :c] = grad
            obj_grad = obj_probs * grad_objectness[:, None]
            full[:, c:] = obj_grad.scatter_add_(1, obj_target[:, None], -grad_objectness[:, None])
            grad = full
        return grad, None, None, None, None, None, None, None


class _BoxClassifierLoss(nn.Module):
    """What mmdet's box heads need of a loss that defines its own outputs and scores."""

    def __init__(self, num_classes: int, loss_weight: float, reduction: str) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.reduction = reduction
        # With these set, the box head asks the loss for its number of outputs
        # (get_cls_channels), the scores (get_activation) and the accuracy (get_accuracy).
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    @staticmethod
    def _roi_weights(cls_score: Tensor, labels: Tensor, label_weights: Tensor | None) -> Tensor:
        """The per-RoI weights mmdet passes (float), or ones when it passes none."""
        if label_weights is None:
            return cls_score.new_ones(labels.shape)
        return label_weights.float()


def _train_categories(ann_file: str, num_classes: int) -> tuple[list[dict], int]:
    """The categories of an LVIS train json in id order, and its number of images."""
    data = json.loads(Path(ann_file).read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if len(categories) != num_classes:
        raise ValueError(f"{ann_file} has {len(categories)} categories, the loss {num_classes}")
    return categories, len(data["images"])


@MODELS.register_module()
class ReproSeesawLoss(_BoxClassifierLoss):
    """The paper's Seesaw loss for a box classifier, with its ablation switches.

    Args:
        num_classes: C, the foreground categories.
        p: exponent of the mitigation factor (Eq. 7); 0 switches it off.
        q: exponent of the compensation factor (Eq. 8); 0 switches it off.
        objectness: with it (Sec. 3.3), the classifier has C + 2 outputs: C class logits
            trained with Seesaw on foreground samples, and 2 objectness logits (foreground,
            background) trained with cross-entropy on all samples. Without it, background is
            class C + 1 of one softmax over C + 1 logits, and Seesaw counts it like any class.
        counts: where the cumulative counts N come from (Table 4): "online" accumulates the
            labels seen in training; "dataset" fixes them to the train split's instance
            counts (`ann_file`, an LVIS json); "checkpoint" fixes them to the counts a trained
            Seesaw run recorded (`checkpoint`, an mmengine checkpoint path).
        eps: the least sigma_i in the compensation factor.

    Under distributed training each rank adds the label counts of every rank's batch (one
    all-reduce of C + 1 numbers per step), so the counts and hence the loss agree across
    ranks and equal what one process would have counted on the whole batch.
    """

    def __init__(
        self,
        num_classes: int,
        p: float = 0.8,
        q: float = 2.0,
        objectness: bool = True,
        counts: str = "online",
        ann_file: str | None = None,
        checkpoint: str | None = None,
        eps: float = 1e-2,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, loss_weight, reduction)
        if counts not in COUNT_SOURCES:
            raise ValueError(f"counts must be one of {COUNT_SOURCES}, not {counts!r}")
        self.p, self.q, self.eps = p, q, eps
        self.objectness = objectness
        self.counts = counts
        self.use_sigmoid = False
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float))
        if counts == "dataset":
            self.cum_samples[:num_classes] = _dataset_counts(ann_file, num_classes)
        elif counts == "checkpoint":
            self.cum_samples.copy_(_recorded_counts(checkpoint, num_classes))

    def get_cls_channels(self, num_classes: int) -> int:
        """Outputs of the classifier: C + 2 with the objectness branch, else C + 1."""
        return num_classes + (2 if self.objectness else 1)

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Scores of the C classes and background; with objectness, class x objectness."""
        if not self.objectness:
            return F.softmax(cls_score, dim=-1)
        classes = F.softmax(cls_score[..., : self.num_classes], dim=-1)
        objectness = F.softmax(cls_score[..., self.num_classes :], dim=-1)
        return torch.cat([classes * objectness[..., :1], objectness[..., 1:]], dim=-1)

    def logits_of(self, scores: Tensor) -> Tensor:
        """Outputs whose get_activation is `scores` (C class scores and background, summing
        to 1): a merge of several classifiers' scores goes on through mmdet as logits."""
        logs = scores.clamp(min=torch.finfo(scores.dtype).tiny).log()
        if not self.objectness:
            return logs
        foreground = logs[..., :-1].logsumexp(-1, keepdim=True)
        return torch.cat([logs[..., :-1] - foreground, foreground, logs[..., -1:]], dim=-1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Accuracy of the class logits on foreground samples (and of objectness)."""
        if not self.objectness:
            return {"acc": accuracy(cls_score, labels)}
        pos = labels < self.num_classes
        return {
            "acc_objectness": accuracy(
                cls_score[:, self.num_classes :], (labels == self.num_classes).long()
            ),
            "acc_classes": accuracy(cls_score[pos, : self.num_classes], labels[pos]),
        }

    def _accumulate(self, labels: Tensor) -> None:
        if self.counts != "online":
            return
        seen = torch.bincount(labels, minlength=self.num_classes + 1).to(self.cum_samples)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(seen)
        self.cum_samples += seen

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        label_weights: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> dict[str, Tensor] | Tensor:
        """The loss on a batch of RoIs; labels in [0, C], C meaning background."""
        reduction = reduction_override or self.reduction
        labels = labels.long()
        weight = self._roi_weights(cls_score, labels, label_weights)
        self._accumulate(labels)
        counts = self.cum_samples if not self.objectness else self.cum_samples[: self.num_classes]
        log_counts = counts.clamp(min=1).log().to(cls_score.dtype)
        loss, loss_objectness = _SeesawCrossEntropy.apply(
            cls_score,
            labels,
            log_counts,
            self.num_classes,
            self.objectness,
            self.p,
            self.q,
            self.eps,
        )
        if not self.objectness:
            return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
        pos = labels < self.num_classes
        # Averaged over the foreground RoIs, as mmdet's SeesawLoss (0 when there is none).
        loss_classes = (
            weight_reduce_loss(loss[pos], weight[pos], reduction, avg_factor)
            if pos.any()
            else loss.sum()
        )
        return {
            "loss_cls_objectness": self.loss_weight
            * weight_reduce_loss(loss_objectness, weight, reduction, avg_factor),
            "loss_cls_classes": self.loss_weight * loss_classes,
        }


def _dataset_counts(ann_file: str | None, num_classes: int) -> Tensor:
    if not ann_file:
        raise ValueError("counts='dataset' needs ann_file, the train split's LVIS json")
    categories, _ = _train_categories(ann_file, num_classes)
    return torch.tensor([float(c["instance_count"]) for c in categories])


def _recorded_counts(checkpoint: str | None, num_classes: int) -> Tensor:
    if not checkpoint:
        raise ValueError("counts='checkpoint' needs checkpoint, a trained Seesaw run's .pth")
    state = load_from_local_safely(checkpoint, map_location="cpu")["state_dict"]
    found = [v for k, v in state.items() if k.endswith("loss_cls.cum_samples")]
    if len(found) != 1 or found[0].numel() != num_classes + 1:
        raise ValueError(f"{checkpoint} has no Seesaw counts for {num_classes} classes")
    return found[0].float()


@MODELS.register_module()
class EqualizationLoss(_BoxClassifierLoss):
    """Equalization Loss (Tan et al., CVPR 2020, Eq. 3-5), a sigmoid loss over C classes.

    L = -sum_j w_j [y_j log p_j + (1 - y_j) log(1 - p_j)], p_j = sigmoid(z_j), with
    w_j = 1 - E(r) T(f_j) (1 - y_j): for a foreground RoI (E = 1), the negative terms of the
    tail classes (T = 1 when class j is in a fraction f_j < lambda of the training images)
    are dropped, so frequent classes stop suppressing them. A background RoI has an all-zero
    target and keeps every term. Normalised by the number of RoIs, as a mean.

    The classifier has C outputs; the scores are the C sigmoids plus a zero background
    column, the layout mmdet's box heads expect.
    """

    def __init__(
        self,
        num_classes: int,
        ann_file: str,
        lambda_: float,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, loss_weight, reduction)
        self.use_sigmoid = True
        categories, num_images = _train_categories(ann_file, num_classes)
        fraction = torch.tensor([c["image_count"] / num_images for c in categories])
        self.register_buffer("tail", (fraction < lambda_).float())

    def get_cls_channels(self, num_classes: int) -> int:
        """C outputs: no background logit."""
        return num_classes

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """C sigmoid scores and a background column of zeros."""
        scores = cls_score.sigmoid()
        return torch.cat([scores, scores.new_zeros(*scores.shape[:-1], 1)], dim=-1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Accuracy of the highest-scoring class on foreground RoIs."""
        pos = labels < self.num_classes
        return {"acc_classes": accuracy(cls_score[pos], labels[pos])}

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        label_weights: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """The loss on a batch of RoIs; labels in [0, C], C meaning background."""
        labels = labels.long()
        target = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].to(cls_score)
        foreground = (labels < self.num_classes).to(cls_score)[:, None]
        weight = 1 - foreground * self.tail[None, :] * (1 - target)
        loss = F.binary_cross_entropy_with_logits(cls_score, target, reduction="none")
        loss = (loss * weight).sum(dim=1)
        return self.loss_weight * weight_reduce_loss(
            loss,
            self._roi_weights(cls_score, labels, label_weights),
            reduction_override or self.reduction,
            avg_factor,
        )


@MODELS.register_module()
class BalancedGroupSoftmaxLoss(_BoxClassifierLoss):
    """Balanced Group Softmax (Li et al., CVPR 2020, Sec. 3.2-3.3), trained end to end.

    The C categories are grouped by their training-instance counts, with the paper's bins
    [1, 10), [10, 100), [100, 1000), [1000, inf) (`bin_edges`; a bin that no category falls
    in is dropped). Each group n >= 1 has its categories' logits plus an "others" logit;
    group 0 has two, foreground and background. Output columns: the C class logits in
    category order, then the K groups' "others" logits, then group 0's (foreground,
    background), so the first C columns are the class logits as for every loss here.

    Training: one softmax cross-entropy per group. Group 0 uses every RoI (target
    background or foreground). Group n uses the RoIs of its own categories (target: that
    category) and a random sample of the other RoIs, foreground and background, as
    "others": at most `others_ratio` times as many as its own (the paper's beta = 8); a
    group with no own RoI in the batch is left out. Each group's loss is averaged over the
    RoIs it uses and the groups' losses are summed (so mmdet's `avg_factor` is not used).

    Inference: a category's score is its softmax within its group times group 0's
    foreground probability; background is group 0's background probability.
    """

    def __init__(
        self,
        num_classes: int,
        ann_file: str,
        bin_edges: tuple[int, ...] = (10, 100, 1000),
        others_ratio: float = 8.0,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, loss_weight, reduction)
        self.use_sigmoid = False
        self.others_ratio = others_ratio
        counts = _dataset_counts(ann_file, num_classes)
        bins = torch.bucketize(counts, torch.tensor(bin_edges, dtype=counts.dtype), right=True)
        groups = [torch.nonzero(bins == b)[:, 0] for b in bins.unique(sorted=True)]
        self.num_groups = len(groups)
        # target[n, label]: the label's index in group n's softmax (0 = "others").
        target = torch.zeros(self.num_groups, num_classes + 1, dtype=torch.long)
        for n, members in enumerate(groups):
            target[n, members] = torch.arange(1, len(members) + 1)
            columns = torch.cat([torch.tensor([num_classes + n]), members])
            self.register_buffer(f"group{n}_members", members, persistent=False)
            self.register_buffer(f"group{n}_columns", columns, persistent=False)
        self.register_buffer("group_target", target, persistent=False)
        start = num_classes + self.num_groups
        self.objectness_columns = slice(start, start + 2)  # group 0: foreground, background

    def group(self, n: int) -> tuple[Tensor, Tensor]:
        """The n-th foreground group (the paper's group n + 1): its categories, and its
        output columns ("others" first, then the categories')."""
        return getattr(self, f"group{n}_members"), getattr(self, f"group{n}_columns")

    def get_cls_channels(self, num_classes: int) -> int:
        """C class logits, one "others" logit per group, foreground and background."""
        return num_classes + self.num_groups + 2

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """C scores (within-group softmax x foreground probability), then background."""
        group0 = F.softmax(cls_score[..., self.objectness_columns], dim=-1)
        classes = cls_score.new_empty(*cls_score.shape[:-1], self.num_classes)
        for n in range(self.num_groups):
            members, columns = self.group(n)
            within = F.softmax(cls_score[..., columns], dim=-1)
            classes[..., members] = within[..., 1:]
        return torch.cat([classes * group0[..., :1], group0[..., 1:]], dim=-1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Accuracy of the merged class scores on foreground RoIs, and of group 0."""
        pos = labels < self.num_classes
        scores = self.get_activation(cls_score)[:, : self.num_classes]
        return {
            "acc_objectness": accuracy(
                cls_score[:, self.objectness_columns], (labels == self.num_classes).long()
            ),
            "acc_classes": accuracy(scores[pos], labels[pos]),
        }

    def _sample_others(self, own: Tensor) -> Tensor:
        """Weights 1 for the own RoIs and a random sample of the others, 0 elsewhere."""
        weight = own.float()
        others = torch.nonzero(~own)[:, 0]
        keep = min(len(others), int(self.others_ratio * int(own.sum())))
        weight[others[torch.randperm(len(others), device=own.device)[:keep]]] = 1.0
        return weight

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        label_weights: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        """The summed group losses on a batch of RoIs; labels in [0, C], C = background."""
        labels = labels.long()
        roi_weight = self._roi_weights(cls_score, labels, label_weights)
        reduction = reduction_override or self.reduction
        background = (labels == self.num_classes).long()
        objectness = cls_score[:, self.objectness_columns]
        group_losses = [
            weight_reduce_loss(
                F.cross_entropy(objectness, background, reduction="none"),
                roi_weight,
                reduction,
                max(float(roi_weight.sum()), 1.0),
            )
        ]
        for n in range(self.num_groups):
            target = self.group_target[n][labels]
            own = target > 0
            if not own.any():
                continue
            weight = self._sample_others(own) * roi_weight
            logits = cls_score[:, self.group(n)[1]]
            group_losses.append(
                weight_reduce_loss(
                    F.cross_entropy(logits, target, reduction="none"),
                    weight,
                    reduction,
                    max(float(weight.sum()), 1.0),
                )
            )
        return self.loss_weight * sum(group_losses)
