"""Table 12's multi-scale flip test for instance segmentation. mmdet 3.3's DetTTAModel
merges boxes only (it asserts there are no masks); InstanceTTAModel merges masks with them:
every view's detections, flipped back where the view was flipped, are pooled and mmdet's
batched NMS keeps the best `max_per_img`, each with its own mask."""

from __future__ import annotations

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_flip
from mmengine.structures import InstanceData


@MODELS.register_module()
class InstanceTTAModel(DetTTAModel):
    """DetTTAModel whose merge keeps each detection's mask (tta_cfg: nms, max_per_img)."""

    def _merge_single_sample(self, data_samples: list[DetDataSample]) -> DetDataSample:
        boxes, masks = [], []
        for sample in data_samples:
            pred, meta = sample.pred_instances, sample.metainfo
            box, mask = pred.bboxes, pred.masks
            if meta.get("flip"):
                box = bbox_flip(box, meta["ori_shape"], meta["flip_direction"])
                dims = {"horizontal": [-1], "vertical": [-2], "diagonal": [-2, -1]}
                mask = mask.flip(dims[meta["flip_direction"]])
            boxes.append(box)
            masks.append(mask)
        scores = torch.cat([s.pred_instances.scores for s in data_samples])
        labels = torch.cat([s.pred_instances.labels for s in data_samples])
        merged = data_samples[0]
        if not len(scores):
            return merged
        kept, keep = batched_nms(torch.cat(boxes), scores, labels, self.tta_cfg.nms)
        keep = keep[: self.tta_cfg.max_per_img]
        merged.pred_instances = InstanceData(
            bboxes=kept[: len(keep), :4],
            scores=kept[: len(keep), 4],
            labels=labels[keep],
            masks=torch.cat(masks)[keep],
        )
        return merged
