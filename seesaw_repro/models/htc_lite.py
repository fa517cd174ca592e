"""HTC-Lite's RoI head (Appendix D.1): mmdet's SCNetRoIHead used without its semantic and
feature-relay branches, which is HTC without the semantic branch, with a global context
encoder (SCNet's GlobalContextHead, the paper's [57]) added to the RoI features of the box
and mask heads, and one mask head, at the last stage (methods.cascade_variant builds it).
Table 12's mask scoring adds mmdet's MaskIoUHead to it (as MaskScoringRoIHead does to Mask
R-CNN): the predicted mask's IoU, learnt on the positives, multiplies the detection score."""

from __future__ import annotations

import torch
from mmdet.models.roi_heads import SCNetRoIHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.models.utils import empty_instances
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmengine.structures import InstanceData
from torch import Tensor


@MODELS.register_module()
class HTCLiteRoIHead(SCNetRoIHead):
    """SCNetRoIHead without semantic and feature-relay branches, with an optional mask IoU
    head (`mask_iou_head`). Its mask prediction works without the relay head (mmdet 3.3's
    SCNetRoIHead.predict_mask calls it unconditionally)."""

    def __init__(self, mask_iou_head: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        assert not self.with_semantic and not self.with_feat_relay, "HTC-Lite has neither"
        self.mask_iou_head = MODELS.build(mask_iou_head) if mask_iou_head else None
        self._loss_mask_iou: dict[str, Tensor] = {}

    def _mask_forward(
        self, x: tuple[Tensor, ...], rois: Tensor, glbctx_feat: Tensor | None = None, **_: object
    ) -> dict:
        feats = self.mask_roi_extractor(x[: self.mask_roi_extractor.num_inputs], rois)
        if glbctx_feat is not None:
            feats = self._fuse_glbctx(feats, glbctx_feat, rois)
        return {"mask_preds": self.mask_head(feats), "mask_feats": feats}

    def mask_loss(
        self,
        x: tuple[Tensor, ...],
        sampling_results: list[SamplingResult],
        batch_gt_instances: list[InstanceData],
        **kwargs: Tensor | None,
    ) -> dict:
        """The mask loss; with a mask IoU head, its loss too (added to the losses by loss())."""
        results = super().mask_loss(x, sampling_results, batch_gt_instances, **kwargs)
        if self.mask_iou_head is not None:
            labels = torch.cat([res.pos_gt_labels for res in sampling_results])
            picked = torch.arange(len(labels))
            masks = results["mask_preds"][picked, labels]
            ious = self.mask_iou_head(results["mask_feats"], masks)[picked, labels]
            self._loss_mask_iou = self.mask_iou_head.loss_and_target(
                ious,
                masks,
                results["mask_targets"],
                sampling_results,
                batch_gt_instances,
                self.train_cfg[-1],
            )
        return results

    def loss(self, *args, **kwargs) -> dict:
        """SCNetRoIHead's losses, plus the mask IoU head's."""
        losses = super().loss(*args, **kwargs)
        losses.update(self._loss_mask_iou)
        self._loss_mask_iou = {}
        return losses

    def predict_mask(
        self,
        x: tuple[Tensor, ...],
        semantic_heat: Tensor | None,
        glbctx_feat: Tensor | None,
        batch_img_metas: list[dict],
        results_list: list[InstanceData],
        rescale: bool = False,
    ) -> list[InstanceData]:
        """Masks of the detected boxes from the one mask head, with the global context; with
        a mask IoU head, each score times its mask's predicted IoU."""
        boxes = [result.bboxes for result in results_list]
        rois = bbox2roi(boxes)
        if rois.shape[0] == 0:
            return empty_instances(
                batch_img_metas=batch_img_metas,
                device=rois.device,
                task_type="mask",
                instance_results=results_list,
                mask_thr_binary=self.test_cfg.mask_thr_binary,
            )
        mask = self._mask_forward(x, rois, glbctx_feat=glbctx_feat)
        per_image = [len(b) for b in boxes]
        results_list = self.mask_head.predict_by_feat(
            mask_preds=mask["mask_preds"].split(per_image, 0),
            results_list=results_list,
            batch_img_metas=batch_img_metas,
            rcnn_test_cfg=self.test_cfg,
            rescale=rescale,
        )
        if self.mask_iou_head is None:
            return results_list
        labels = torch.cat([result.labels for result in results_list])
        masks = mask["mask_preds"][torch.arange(len(labels)), labels]
        ious = self.mask_iou_head(mask["mask_feats"], masks).split(per_image, 0)
        return self.mask_iou_head.predict_by_feat(mask_iou_preds=ious, results_list=results_list)
