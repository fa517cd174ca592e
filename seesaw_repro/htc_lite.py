"""HTC-Lite's RoI head (Appendix D.1): mmdet's SCNetRoIHead used without its semantic and
feature-relay branches, which is HTC without the semantic branch, with a global context
encoder (SCNet's GlobalContextHead, the paper's [57]) added to the RoI features of the box
and mask heads, and one mask head, at the last stage (methods.cascade_variant builds it)."""

from __future__ import annotations

from mmdet.models.roi_heads import SCNetRoIHead
from mmdet.models.utils import empty_instances
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmengine.structures import InstanceData
from torch import Tensor


@MODELS.register_module()
class HTCLiteRoIHead(SCNetRoIHead):
    """SCNetRoIHead whose mask prediction works without a feature-relay head (mmdet 3.3's
    SCNetRoIHead.predict_mask calls it unconditionally)."""

    def predict_mask(
        self,
        x: tuple[Tensor, ...],
        semantic_heat: Tensor | None,
        glbctx_feat: Tensor | None,
        batch_img_metas: list[dict],
        results_list: list[InstanceData],
        rescale: bool = False,
    ) -> list[InstanceData]:
        """Masks of the detected boxes from the one mask head, with the global context."""
        if self.with_feat_relay:
            return super().predict_mask(
                x, semantic_heat, glbctx_feat, batch_img_metas, results_list, rescale
            )
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
        masks = self._mask_forward(
            x=x, rois=rois, semantic_feat=semantic_heat, glbctx_feat=glbctx_feat
        )["mask_preds"]
        return self.mask_head.predict_by_feat(
            mask_preds=masks.split([len(b) for b in boxes], 0),
            results_list=results_list,
            batch_img_metas=batch_img_metas,
            rcnn_test_cfg=self.test_cfg,
            rescale=rescale,
        )
