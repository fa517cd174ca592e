"""Table 12's steps (Appendix D.2, the LVIS Challenge 2020 entry) as parts of an mmdet config,
switched on by RunSpec fields; like methods.py, the same in every preset, which gives only the
sizes (ChallengeScale) and the backbone.

mmdet/mmcv components wherever they exist: SyncBN, CARAFEPack (carafe.py adds its CPU
arithmetic), FPG, ResNeSt with DCNv2, MaskIoUHead, InstaBoost, TestTimeAug. The suite's
own: TSD (tsd.py), HTC-Lite with mask scoring (htc_lite.py), CARAFE++ downsampling in FPG
(carafe.py) and the instance-segmentation test-time merge (tta.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

from seesaw_repro.paper.methods import RunSpec

# mmdet's CARAFE mask head (configs/carafe/mask-rcnn_r50_fpn-carafe_1x_coco.py)
CARAFE_UPSAMPLE = {
    "type": "carafe",
    "scale_factor": 2,
    "up_kernel": 5,
    "up_group": 1,
    "encoder_kernel": 3,
    "encoder_dilation": 1,
    "compressed_channels": 64,
}
# mmdet's InstaBoost settings (configs/instaboost/)
INSTABOOST = {
    "type": "InstaBoost",
    "action_candidate": ("normal", "horizontal", "skip"),
    "action_prob": (1, 0, 0),
    "scale": (0.8, 1.2),
    "dx": 15,
    "dy": 15,
    "theta": (-1, 1),
    "color_prob": 0.5,
    "hflag": False,
    "aug_ratio": 0.5,
}
DCN_V2 = {"type": "DCNv2", "deform_groups": 1}
# The dual head's second classifier: trained 1x with RFS (Appendix D.2).
DUAL_HEAD_TRAINING = {"sampler": "rfs", "schedule": "1x"}


@dataclass(frozen=True)
class ChallengeScale:
    """The sizes Table 12's steps take in one preset."""

    train_long_edges: tuple[int, int]  # longer edge drawn from this range
    edge_step: int  # ... in steps of this many pixels
    crop: int  # square crop after resizing
    test_long_edges: tuple[int, ...]  # multi-scale test
    flip: bool  # flip in training and test
    mask_iou_fc: int  # MaskIoUHead's fc width
    fpg_stacks: int  # FPG's stacked bottom-up paths (mmdet's configs: 9)

    @property
    def test_views(self) -> int:
        """Views of an image in the multi-scale (flip) test."""
        return len(self.test_long_edges) * (2 if self.flip else 1)


def norm_cfg(spec: RunSpec) -> dict:
    """BN, or SyncBN with the syncbn step (mmengine reverts it to BN in a single process)."""
    return {"type": "SyncBN" if spec.norm == "syncbn" else "BN", "requires_grad": True}


def _heads(value: dict | list) -> list[dict]:
    return value if isinstance(value, list) else [value]


def model_steps(spec: RunSpec, model: dict, num_classes: int, scale: ChallengeScale) -> None:
    """Switch on the model's Table 12 steps in `model` (after methods.cascade_variant)."""
    roi_head = model["roi_head"]
    if spec.norm == "syncbn":
        # "SyncBN in the backbone and heads": every norm layer there; the box heads are fcs
        # without norm layers, and FPN and the mask and context heads gain them.
        model["backbone"].update(norm_cfg=norm_cfg(spec), norm_eval=False)
        heads = [model["neck"], *_heads(roi_head["mask_head"]), roi_head.get("glbctx_head")]
        for head in filter(None, heads):
            head["norm_cfg"] = norm_cfg(spec)
    if spec.mask_upsample == "carafe":
        for head in _heads(roi_head["mask_head"]):
            head["upsample_cfg"] = dict(CARAFE_UPSAMPLE)
    if spec.box_head == "tsd":
        roi_head["type"] = "TSDRoIHead"
        # Appendix D.2: no classification PC once Seesaw classifies
        pc_cls = not (spec.loss == "seesaw" and (spec.mitigation or spec.compensation))
        roi_head["bbox_head"] = [
            {**{k: v for k, v in head.items() if k != "num_shared_fcs"}, "type": "TSDBBoxHead"}
            | {"pc_cls": pc_cls, "dual_cls": spec.dual_head}
            for head in roi_head["bbox_head"]
        ]
    if spec.mask_scoring:
        channels = roi_head["mask_roi_extractor"]["out_channels"]
        roi_head["mask_iou_head"] = {
            "type": "MaskIoUHead",
            "num_convs": 4,
            "num_fcs": 2,
            "roi_feat_size": 14,
            "in_channels": channels,
            "conv_out_channels": channels,
            "fc_out_channels": scale.mask_iou_fc,
            "num_classes": num_classes,
        }
        for stage in model["train_cfg"]["rcnn"]:
            stage["mask_thr_binary"] = 0.5
    if spec.neck == "fpg":
        model["neck"] = enhanced_fpg(model["neck"], norm_cfg(spec), scale.fpg_stacks)
        # FPG adds its levels across stacks: every level's size must halve exactly, up to
        # the coarsest (stride 64), as mmdet's FPG configs pad
        model["data_preprocessor"]["pad_size_divisor"] = 64


def enhanced_fpg(fpn: dict, norm: dict, stacks: int) -> dict:
    """The enhanced FPG in place of `fpn` (same inputs and outputs): mmdet's FPG of its
    configs/fpg with `stacks` bottom-up paths, DCNv2 after upsampling and CARAFE++ for the
    downsampling (the stride-2 conv of FPG's bottom-up transition)."""
    act_first = {"order": ("act", "conv", "norm"), "inplace": False, "norm_cfg": norm}
    channels = fpn["out_channels"]
    return {
        "type": "EnhancedFPG",
        "in_channels": fpn["in_channels"],
        "out_channels": channels,
        "inter_channels": channels,
        "num_outs": fpn["num_outs"],
        "stack_times": stacks,
        "paths": ["bu"] * stacks,
        "same_down_trans": None,
        "same_up_trans": {"type": "carafe_down", **act_first},
        "across_lateral_trans": {"type": "conv", "kernel_size": 1, **act_first},
        "across_down_trans": {
            "type": "interpolation_conv",
            "mode": "nearest",
            "kernel_size": 3,
            "conv_cfg": dict(DCN_V2),
            **act_first,
        },
        "across_up_trans": None,
        "across_skip_trans": {"type": "conv", "kernel_size": 1, **act_first},
        "output_trans": {
            "type": "last_conv",
            "kernel_size": 3,
            "order": ("act", "conv", "norm"),
            "inplace": False,
        },
        "norm_cfg": norm,
        # mmdet's: level i skips the first 4 - i stacks (shallower paths to the top levels)
        "skip_inds": [tuple(range(min(4 - i, stacks))) for i in range(5)],
    }


def train_pipeline(spec: RunSpec, pipeline: list[dict], scale: ChallengeScale) -> list[dict]:
    """The training pipeline: `pipeline` as is, or with the challenge augmentation
    (InstaBoost, longer edge drawn from scale.train_long_edges, a square crop, flip)."""
    if spec.augment != "challenge":
        return pipeline
    low, high = scale.train_long_edges
    edges = range(low, high + 1, scale.edge_step)
    return [
        {"type": "LoadImageFromFile"},
        dict(INSTABOOST),
        {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
        {"type": "RandomChoiceResize", "scales": [(e, e) for e in edges], "keep_ratio": True},
        {
            "type": "RandomCrop",
            "crop_size": (scale.crop, scale.crop),
            "crop_type": "absolute",
            "recompute_bbox": True,
            "allow_negative_crop": True,
        },
        {"type": "FilterAnnotations", "min_gt_bbox_wh": (1e-2, 1e-2)},
        *([{"type": "RandomFlip", "prob": 0.5}] if scale.flip else []),
        {"type": "PackDetInputs"},
    ]


def training_spec(spec: RunSpec) -> RunSpec:
    """What a run trains with: a dual-head fine-tune trains 1x with RFS whatever its first
    stage did (DUAL_HEAD_TRAINING); every other run, its spec."""
    return replace(spec, **DUAL_HEAD_TRAINING) if spec.dual_head else spec


def test_augmentation(config: dict, trained: str, scale: ChallengeScale) -> None:
    """Turn a trained run's config into its multi-scale (flip) test: load `trained`, predict
    each val image at every longer edge of scale.test_long_edges (and flipped), merge
    (tta.InstanceTTAModel) and evaluate as the trained run does."""
    config["load_from"] = trained
    config["seesaw"].update(job="evaluate", eval_split="val")
    loader = copy.deepcopy(config["val_dataloader"])
    steps: dict[str, Any] = {t["type"]: t for t in loader["dataset"]["pipeline"]}
    flips = [{"type": "RandomFlip", "prob": p} for p in ((1.0, 0.0) if scale.flip else (0.0,))]
    edges = scale.test_long_edges
    resizes = [{"type": "Resize", "scale": (e, e), "keep_ratio": True} for e in edges]
    meta_keys = (*steps["PackDetInputs"]["meta_keys"], "flip", "flip_direction")
    loader["dataset"]["pipeline"] = [
        steps["LoadImageFromFile"],
        {
            "type": "TestTimeAug",
            "transforms": [
                resizes,
                flips,
                [steps["LoadAnnotations"]],
                [{"type": "PackDetInputs", "meta_keys": meta_keys}],
            ],
        },
    ]
    config.update(
        test_dataloader=loader,
        test_evaluator=copy.deepcopy(config["val_evaluator"]),
        test_cfg={"type": "TestLoop"},
    )
    config["model"] = {
        "type": "InstanceTTAModel",
        "module": config["model"],
        # after the merge, as many detections per image as the model keeps from one view
        "tta_cfg": {
            "nms": {"type": "nms", "iou_threshold": 0.5},
            "max_per_img": config["model"]["test_cfg"]["rcnn"]["max_per_img"],
        },
    }
