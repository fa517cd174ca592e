"""TSD (Song et al., CVPR 2020, "Revisiting the Sibling Head in Object Detector") as the box
head of HTC-Lite's cascade stages (Appendix D.2 of the Seesaw paper).

From the RoI feature of a proposal P, fcs predict two disentangled proposals: for
classification, each of the k x k bins of P moved by its own offset, gamma * dC_ij * (w, h)
(a deformable RoI pooling); for regression, P translated as a whole, P_r = P + gamma * dR *
(w, h). Each task gets its own branch on its own features. The sibling head (the usual
shared-fc head on P) is trained beside it and the progressive constraint (PC) asks TSD to
beat it by a margin: on the ground-truth class's probability (every sample) and on the IoU of
the decoded box with its ground truth (positives). Only TSD's branches predict. Appendix D.2
removes the classification PC when the classifier is trained with Seesaw (methods.py).

TSD's regression is learnt against P_r (targets of P_r, which does not move with the
target). The head hands it on in P's frame, `delta + gamma * dR / std` (exact: P_r has P's
size), so that the cascade's box refinement, its losses and its prediction take it unchanged.

Dual-head classification (Table 12): a second classification branch, trained alone on the
frozen model; at test time its logits and the original branch's are averaged, as mmdet's
cascade averages its stages' logits.
"""

from __future__ import annotations

import copy

import mmcv.ops
import torch
import torch.nn.functional as F
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.model import normal_init, xavier_init
from torch import Tensor, nn

from seesaw_repro.models.htc_lite import HTCLiteRoIHead

GAMMA = 0.1  # TSD's scale of the predicted offsets


def deform_roi_align(
    features: Tensor,
    rois: Tensor,
    offsets: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float = GAMMA,
) -> Tensor:
    """Deformable RoI pooling: aligned RoIAlign (sampling_ratio^2 points per bin) whose bin
    (i, j) is moved by gamma * offsets[:, :, i, j] * (roi width, roi height).

    features (B, C, H, W); rois (n, 5) as (image, x1, y1, x2, y2); offsets (n, 2, k, k), x
    then y. mmcv's kernel where there is one (CUDA); elsewhere the same arithmetic in torch,
    differentiable in features and offsets like the kernel.
    """
    if features.is_cuda:
        return mmcv.ops.deform_roi_pool(
            features, rois, offsets, output_size, spatial_scale, sampling_ratio, gamma
        )
    k, s = output_size, sampling_ratio
    if not len(rois):
        return features.new_zeros(0, features.shape[1], k, k)
    start = rois[:, 1:3] * spatial_scale - 0.5  # (n, 2): x, y
    size = rois[:, 3:5] * spatial_scale - 0.5 - start
    steps = torch.arange(k, dtype=rois.dtype, device=rois.device).repeat_interleave(s)
    steps = steps + (torch.arange(s, dtype=rois.dtype, device=rois.device).repeat(k) + 0.5) / s
    points = start[:, :, None] + steps * (size / k)[:, :, None]  # (n, 2, k*s)
    shift = gamma * offsets * size[:, :, None, None]
    shift = shift.repeat_interleave(s, 2).repeat_interleave(s, 3)  # (n, 2, ks, ks): [y, x]
    xy = torch.stack(
        [points[:, 0, None, :] + shift[:, 0], points[:, 1, :, None] + shift[:, 1]], dim=-1
    )  # (n, ks, ks, 2): pixel coordinates x, y of every sampling point
    height, width = features.shape[-2:]
    # mmcv's bilinear interpolation: clamped to the edge up to one pixel outside the map
    # (grid_sample's "border"), zero beyond
    inside = (xy >= -1).all(-1) & (xy[..., 0] <= width) & (xy[..., 1] <= height)
    scale = xy.new_tensor([max(width - 1, 1), max(height - 1, 1)])
    # torch's CPU grid_sample reads out of bounds (a segfault, seen when a tiny run diverged)
    # for non-finite coordinates; they sample nothing instead (`inside` is false for them)
    grid = torch.nan_to_num(xy / scale * 2 - 1, nan=-2.0, posinf=-2.0, neginf=-2.0)
    grid = grid.to(features.dtype)
    # One grid_sample for the batch: each image's RoIs in its own row, padded to the most
    # RoIs of an image (slicing the features per image would copy them per call, backward)
    image = rois[:, 0].long()
    counts = torch.bincount(image, minlength=len(features))
    order = torch.argsort(image, stable=True)
    slot = torch.empty_like(image)
    slot[order] = (
        torch.arange(len(rois), device=rois.device) - (counts.cumsum(0) - counts)[image[order]]
    )
    rows = grid.new_zeros(len(features), int(counts.max()), k * s, k * s, 2)
    rows[image, slot] = grid
    sampled = F.grid_sample(
        features,
        rows.flatten(1, 2),  # (B, most * ks, ks, 2)
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )  # (B, C, most * ks, ks)
    sampled = sampled.unflatten(2, (-1, k * s)).movedim(1, 2)  # (B, most, C, ks, ks)
    out = sampled[image, slot] * inside[:, None].to(features.dtype)
    return out.view(len(rois), -1, k, s, k, s).mean((3, 5))


@MODELS.register_module()
class TSDBBoxHead(ConvFCBBoxHead):
    """The sibling head (two shared fcs, as Shared2FCBBoxHead) plus TSD's offset fcs and its
    own classification and regression branches (two fcs each, like the sibling's).

    pc_cls: keep the classification PC (Appendix D.2 drops it with Seesaw). dual_cls: add
    the dual-head classification branch (`dual_cls`), trained by a fine-tune.
    """

    def __init__(
        self,
        pc_cls: bool = True,
        pc_margin: float = 0.2,
        offset_channels: int = 256,
        sampling_ratio: int = 2,
        dual_cls: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(num_shared_fcs=2, **kwargs)
        self.pc_cls, self.pc_margin, self.sampling_ratio = pc_cls, pc_margin, sampling_ratio
        self.offset_fc = nn.Sequential(
            nn.Linear(self.in_channels * self.roi_feat_area, offset_channels), nn.ReLU()
        )
        self.delta_c = nn.Sequential(
            nn.Linear(offset_channels, offset_channels),
            nn.ReLU(),
            nn.Linear(offset_channels, 2 * self.roi_feat_area),
        )
        self.delta_r = nn.Sequential(
            nn.Linear(offset_channels, offset_channels), nn.ReLU(), nn.Linear(offset_channels, 2)
        )
        self.tsd_cls = self._branch(self.fc_cls)
        self.tsd_reg = self._branch(self.fc_reg)
        self.dual_cls = self._branch(self.fc_cls) if dual_cls else None

    def _branch(self, predictor: nn.Module) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"fcs": copy.deepcopy(self.shared_fcs), "out": copy.deepcopy(predictor)}
        )

    def init_weights(self) -> None:
        """The sibling as mmdet initialises it; TSD's fcs alike (xavier, the classifier
        normal 0.01, the regressor 0.001); the offsets' last layers at zero, so that TSD
        starts from the proposal itself."""
        super().init_weights()
        branches = [(self.tsd_cls, 0.01), (self.tsd_reg, 0.001)]
        branches += [(self.dual_cls, 0.01)] if self.dual_cls is not None else []
        for branch, std in branches:
            for fc in branch["fcs"]:
                xavier_init(fc, distribution="uniform")
            normal_init(branch["out"], std=std)
        for net in (self.delta_c, self.delta_r):
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def offsets(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """dC (n, 2, k, k) and dR (n, 2) from the RoI features of the proposals."""
        hidden = self.offset_fc(roi_feats.flatten(1))
        k = self.roi_feat_size[0]
        return self.delta_c(hidden).view(-1, 2, k, k), self.delta_r(hidden)

    @staticmethod
    def _run(branch: nn.ModuleDict, feats: Tensor) -> Tensor:
        x = feats.flatten(1)
        for fc in branch["fcs"]:
            x = F.relu(fc(x))
        return branch["out"](x)

    def tsd_forward(self, cls_feats: Tensor, reg_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits and regression deltas (against P_r) of TSD's branches. With the dual
        head: its logits alone in training; at test time the two branches' scores averaged,
        as Appendix D.2 says (not their logits: Seesaw's scores are class x objectness), and
        returned as the logits of that average (the loss's logits_of)."""
        cls_score = self._run(self.tsd_cls, cls_feats)
        if self.dual_cls is not None:
            dual = self._run(self.dual_cls, cls_feats)
            if self.training:
                cls_score = dual
            else:
                scores = (self._probabilities(cls_score) + self._probabilities(dual)) / 2
                cls_score = self.loss_cls.logits_of(scores)
        return cls_score, self._run(self.tsd_reg, reg_feats)

    def to_proposal_frame(self, bbox_pred: Tensor, delta_r: Tensor) -> Tensor:
        """Deltas against P_r as deltas against P: the translation added in delta units (the
        targets' frame moves with dR but is not learnt through it: dR is detached)."""
        stds = bbox_pred.new_tensor(self.bbox_coder.stds[:2])
        shift = F.pad(GAMMA * delta_r.detach() / stds, (0, 2))
        return (bbox_pred.view(len(bbox_pred), -1, 4) + shift[:, None]).view_as(bbox_pred)

    def _probabilities(self, cls_score: Tensor) -> Tensor:
        if self.custom_activation:
            return self.loss_cls.get_activation(cls_score)
        return F.softmax(cls_score, dim=-1)

    def _class_deltas(self, bbox_pred: Tensor, labels: Tensor) -> Tensor:
        if self.reg_class_agnostic:
            return bbox_pred.view(len(bbox_pred), 4)
        return bbox_pred.view(len(bbox_pred), -1, 4)[torch.arange(len(labels)), labels]

    def progressive_constraint(self, results: dict) -> dict[str, Tensor]:
        """TSD's PC: hinge losses asking TSD's ground-truth-class probability (every sample;
        only with pc_cls) and its box's IoU with the ground truth (positives) to exceed the
        sibling's by min(margin, 1 - sibling's)."""
        labels, _, targets, _ = results["bbox_targets"]
        losses = {}
        if self.pc_cls:
            picked = [
                self._probabilities(results[key]).gather(1, labels[:, None]).squeeze(1)
                for key in ("sibling_cls_score", "cls_score")
            ]
            losses["loss_pc_cls"] = self._hinge(*picked).mean()
        pos = (labels >= 0) & (labels < self.num_classes)
        if not pos.any():
            losses["loss_pc_loc"] = results["bbox_pred"].sum() * 0
            return losses
        priors = results["rois"][pos, 1:]
        gt = self.bbox_coder.decode(priors, targets[pos])
        ious = [
            bbox_overlaps(
                self.bbox_coder.decode(priors, self._class_deltas(results[key][pos], labels[pos])),
                gt,
                is_aligned=True,
            )
            for key in ("sibling_bbox_pred", "bbox_pred")
        ]
        losses["loss_pc_loc"] = self._hinge(*ious).mean()
        return losses

    def _hinge(self, sibling: Tensor, tsd: Tensor) -> Tensor:
        margin = torch.clamp(1 - sibling, max=self.pc_margin).detach()
        return F.relu(sibling.detach() + margin - tsd)


@MODELS.register_module()
class TSDRoIHead(HTCLiteRoIHead):
    """HTC-Lite with TSD box heads in every stage (TSDBBoxHead): TSD's disentangled features
    pooled from the FPN level of each proposal, the global context added to them too."""

    def _tsd_features(self, stage: int, x: tuple[Tensor, ...], rois: Tensor, offsets: Tensor):
        extractor = self.bbox_roi_extractor[stage]
        k = extractor.roi_layers[0].output_size[0]
        levels = extractor.map_roi_levels(rois, len(extractor.featmap_strides))
        out = x[0].new_zeros(len(rois), extractor.out_channels, k, k)
        for level, stride in enumerate(extractor.featmap_strides):
            inds = levels == level
            if inds.any():
                out[inds] = deform_roi_align(
                    x[level],
                    rois[inds],
                    offsets[inds],
                    k,
                    1.0 / stride,
                    self.bbox_head[stage].sampling_ratio,
                )
        return out

    def _bbox_forward(
        self,
        stage: int,
        x: tuple[Tensor, ...],
        rois: Tensor,
        semantic_feat: Tensor | None = None,
        glbctx_feat: Tensor | None = None,
    ) -> dict:
        """TSD's predictions (regression in P's frame); in training also the sibling's."""
        extractor, head = self.bbox_roi_extractor[stage], self.bbox_head[stage]
        x = x[: extractor.num_inputs]
        roi_feats = extractor(x, rois)
        if glbctx_feat is not None:
            roi_feats = self._fuse_glbctx(roi_feats, glbctx_feat, rois)
        delta_c, delta_r = head.offsets(roi_feats)
        k = delta_c.shape[-1]
        cls_feats = self._tsd_features(stage, x, rois, delta_c)
        uniform = delta_r[:, :, None, None].expand(-1, -1, k, k)  # every bin moved alike
        reg_feats = self._tsd_features(stage, x, rois, uniform)
        if glbctx_feat is not None:
            cls_feats = self._fuse_glbctx(cls_feats, glbctx_feat, rois)
            reg_feats = self._fuse_glbctx(reg_feats, glbctx_feat, rois)
        cls_score, bbox_pred = head.tsd_forward(cls_feats, reg_feats)
        results = {
            "cls_score": cls_score,
            "bbox_pred": head.to_proposal_frame(bbox_pred, delta_r),
            "relayed_feat": None,
        }
        if self.training and head.dual_cls is None:
            results["sibling_cls_score"], results["sibling_bbox_pred"] = head(roi_feats)
        return results

    def bbox_loss(
        self,
        stage: int,
        x: tuple[Tensor, ...],
        sampling_results: list[SamplingResult],
        **kwargs: Tensor | None,
    ) -> dict:
        """TSD's losses, the sibling's (`sibling_` keys) and the PC, on the same targets."""
        results = super().bbox_loss(stage, x, sampling_results, **kwargs)
        if "sibling_cls_score" in results:
            head, losses = self.bbox_head[stage], results["loss_bbox"]
            sibling = head.loss(
                results["sibling_cls_score"],
                results["sibling_bbox_pred"],
                results["rois"],
                *results["bbox_targets"],
            )
            losses.update({f"sibling_{name}": value for name, value in sibling.items()})
            losses.update(head.progressive_constraint(results))
        return results
