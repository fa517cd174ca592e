"""The methods the paper compares, as parts of an mmdet config: what a RunSpec switches on.

These parts are the same in every preset (presets.py); a preset only chooses the data, the
model's size and the schedule. Paths are placeholders (DATA_ROOT, RUNS_DIR) that
configs.materialise fills in, so they never enter a run's identity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Any

from seesaw_repro.data.synth import TEST_DEV_INFO
from seesaw_repro.errors import UserError
from seesaw_repro.run_folder import PER_CATEGORY_FILE

DATA_ROOT = "${DATA_ROOT}"
RUNS_DIR = "${RUNS_DIR}"  # where the runs a config depends on keep their checkpoints
# Files named under the run's work dir; a materialised config names them relative to it (see
# configs.materialise), so that one trained elsewhere writes them there.
WORK_DIR = "${WORK_DIR}"


# Training schedules: epochs and the epochs after which the learning rate drops by 10x
# (Sec. 4.1 for 1x and 2x; Appendix D.2 for Table 12's 45 epochs).
SCHEDULES = {"1x": (12, (8, 11)), "2x": (24, (16, 22)), "45e": (45, (30, 40))}


class SpecError(UserError):
    """A recipe or option asks for something the suite cannot build."""


class SpecFields:
    """What every spec of a recipe row shares: its choices checked, its keys listed."""

    CHOICES: dict[str, tuple] = {}

    def check_fields(self) -> None:
        """Raise a SpecError for a field of the wrong type (a number must be >= 0) or a
        value not among its CHOICES."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool" and not isinstance(value, bool):
                raise SpecError(f"{field.name} must be true or false, not {value!r}")
            if field.type == "str" and not isinstance(value, str):
                raise SpecError(f"{field.name} must be a string, not {value!r}")
            if field.type in ("int", "float"):
                kinds = (int,) if field.type == "int" else (int, float)
                if isinstance(value, bool) or not isinstance(value, kinds):
                    kind = "a whole number" if field.type == "int" else "a number"
                    raise SpecError(f"{field.name} must be {kind} >= 0, not {value!r}")
                if not value >= 0 or value == float("inf"):
                    raise SpecError(f"{field.name} must be >= 0 and finite, not {value!r}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name} = {getattr(self, name)!r} is not one of {allowed}")

    @classmethod
    def field_names(cls) -> set[str]:
        """The keys a recipe may set."""
        return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class RunSpec(SpecFields):
    """What one run trains: method and model, independent of preset, paths and GPUs."""

    model: str = "mask_rcnn"
    loss: str = "seesaw"  # "seesaw" | "eql" (Equalization Loss) | "bags" (Balanced Group Softmax)
    backbone: str = "r50"
    sampler: str = "rfs"  # "random" | "rfs" (repeat factor sampling)
    schedule: str = "2x"
    mitigation: bool = True  # Seesaw's mitigation factor, Eq. 7
    compensation: bool = True  # Seesaw's compensation factor, Eq. 8
    p: float = 0.8
    q: float = 2.0
    objectness: bool = True  # the objectness branch of Sec. 3.3 (Table 8 switches it off)
    # Seesaw's class counts N (Table 4): "online", "dataset", or "checkpoint" (recorded by
    # a trained Seesaw run of this spec with online counts: "Pre-Record").
    counts: str = "online"
    nla: bool = True  # normalized linear activation of the box classifier
    tau: float = 20.0
    norm_mask: bool = False  # Normalized Mask Prediction (Sec. 3.3), same tau as NLA
    gradient_stats: bool = False  # record Figure 3's gradient statistics (hooks.GradientStatsHook)
    # Figure 1's per-category classification accuracy (hooks.ClassificationAccuracyHook)
    classification_accuracy: bool = False
    # Table 13's inference speed: images per second at batch 1 (hooks.InferenceSpeedHook)
    inference_speed: bool = False
    # Decoupled training (Table 9): "" trains end to end; "random" or "rfs" fine-tunes only the
    # box classifier's last layer of a CE model pre-trained 2x with that sampler.
    decoupled: str = ""
    # "test-dev": run the trained "val" run on LVIS test-dev and write the result files the
    # LVIS evaluation server takes (Table 1's test-dev rows); it trains nothing itself.
    split: str = "val"
    # Table 12's steps (Appendix D.2), each off by default.
    norm: str = "bn"  # "syncbn": SyncBN in the backbone, neck and heads
    mask_upsample: str = "deconv"  # "carafe": CARAFE upsampling in the mask head
    box_head: str = "shared_fc"  # "tsd": TSD box heads in HTC-Lite's stages (tsd.py)
    mask_scoring: bool = False  # a mask IoU head rescoring the detections (htc_lite.py)
    # "challenge": longer edge 768-1792, 1280 x 1280 crop, InstaBoost (with the 45e schedule)
    augment: str = "standard"
    neck: str = "fpn"  # "fpg": the enhanced FPG (DCNv2 after upsampling, CARAFE downsampling)
    # Dual-head classification: a new classifier per stage fine-tuned 1x with RFS on this
    # spec's frozen model (without dual_head), scores averaged with the original ones.
    dual_head: bool = False
    # Multi-scale flip test (longer edge 1200-2000) of this spec's trained model.
    test_aug: bool = False
    # mmengine's randomness seed: initialisation and data order. Rows of a table at one seed
    # see the same data order, so their difference is a paired comparison.
    seed: int = 0

    CHOICES = {
        "model": ("mask_rcnn", "cascade_mask_rcnn", "htc", "htc_lite"),
        "loss": ("seesaw", "eql", "bags"),
        "backbone": ("r50", "r101", "resnest200_dcn"),
        "sampler": ("random", "rfs"),
        "schedule": ("1x", "2x", "45e"),
        "norm": ("bn", "syncbn"),
        "mask_upsample": ("deconv", "carafe"),
        "box_head": ("shared_fc", "tsd"),
        "augment": ("standard", "challenge"),
        "neck": ("fpn", "fpg"),
        "counts": ("online", "dataset", "checkpoint"),
        "decoupled": ("", "random", "rfs"),
        "split": ("val", "test-dev"),
    }

    def __post_init__(self) -> None:
        self.check_fields()
        if self.tau == 0:
            raise SpecError("tau must be > 0: NLA divides by it")
        needs_htc_lite = {"box_head": self.box_head == "tsd", "mask_scoring": self.mask_scoring}
        for name, used in needs_htc_lite.items():
            if used and self.model != "htc_lite":
                raise SpecError(f"{name} is built for model = 'htc_lite', not {self.model!r}")
        if self.dual_head and (self.box_head, self.loss) != ("tsd", "seesaw"):
            # its scores are merged through ReproSeesawLoss.logits_of, in TSD's head
            raise SpecError("dual_head is built for box_head = 'tsd' with loss = 'seesaw'")

    @property
    def summary(self) -> str:
        """A few words for `seesaw plan`."""
        extras = [("+ dual head 1x rfs", self.dual_head), ("+ flip test", self.test_aug)]
        words = [self.model, self.backbone, self.sampler, self.schedule]
        return " ".join(words + [text for text, on in extras if on])


def dependencies(spec: RunSpec) -> dict[str, RunSpec]:
    """The runs whose final checkpoint `spec` needs, by role.

    "pretrained": for a decoupled run, the paper's CE baseline (Table 2's first row: softmax
    cross-entropy with the objectness branch, no NLA) trained 2x with the given sampler, of
    the same model, backbone and mask head. "counts": for Pre-Record counts, the same run
    with online counts. "trained": for a test-dev run, the same run on the val split.
    "evaluated": for a multi-scale flip test, the same run tested plainly. "first_stage": for
    a dual-head fine-tune, the same run without the dual head.
    """
    if spec.test_aug:
        return {"evaluated": replace(spec, test_aug=False)}
    needs = {}
    if spec.dual_head:
        needs["first_stage"] = replace(spec, dual_head=False)
    if spec.decoupled:
        needs["pretrained"] = RunSpec(
            model=spec.model,
            backbone=spec.backbone,
            sampler=spec.decoupled,
            schedule="2x",
            loss="seesaw",
            mitigation=False,
            compensation=False,
            objectness=True,
            nla=False,
            norm_mask=spec.norm_mask,
            tau=spec.tau,
            seed=spec.seed,
        )
    if spec.split == "test-dev":
        return {"trained": replace(spec, split="val")}
    if spec.loss == "seesaw" and spec.counts == "checkpoint":
        needs["counts"] = replace(
            spec, counts="online", gradient_stats=False, classification_accuracy=False
        )
    return needs


def bbox_head_method(
    spec: RunSpec, num_classes: int, tail_fraction: float, counts_checkpoint: str | None = None
) -> dict:
    """The part of the box head that is the method: its loss and NLA.

    Seesaw: a factor switched off is p = 0 or q = 0; with both off and the objectness branch
    it is softmax cross-entropy over the C classes plus the objectness branch (C + 2 outputs).
    EQL: tail classes are those in fewer than `tail_fraction` of the training images.
    BAGS: the paper's groups by training-instance count, in every preset.
    """
    ann_file = f"{DATA_ROOT}/annotations/lvis_v1_train.json"
    loss: dict[str, Any]
    if spec.loss == "bags":
        loss = {
            "type": "BalancedGroupSoftmaxLoss",
            "num_classes": num_classes,
            "ann_file": ann_file,
        }
    elif spec.loss == "eql":
        loss = {
            "type": "EqualizationLoss",
            "num_classes": num_classes,
            "ann_file": ann_file,
            "lambda_": tail_fraction,
        }
    else:
        loss = {
            "type": "ReproSeesawLoss",
            "num_classes": num_classes,
            "p": spec.p if spec.mitigation else 0.0,
            "q": spec.q if spec.compensation else 0.0,
            "objectness": spec.objectness,
            "counts": spec.counts,
            "loss_weight": 1.0,
        }
        if spec.counts == "dataset":
            loss["ann_file"] = ann_file
        elif spec.counts == "checkpoint":
            loss["checkpoint"] = counts_checkpoint
    head: dict[str, Any] = {"num_classes": num_classes, "loss_cls": loss}
    if spec.nla:
        # mmdet spells the argument "tempearture".
        head["cls_predictor_cfg"] = {"type": "NormedLinear", "tempearture": spec.tau}
    return head


def mask_head_method(spec: RunSpec) -> dict:
    """Normalized Mask Prediction: the mask head's final 1x1 conv on L2-normalised weights
    and features, times tau (mmdet's NormedConv2d normalises exactly those)."""
    if not spec.norm_mask:
        return {}
    return {"predictor_cfg": {"type": "NormedConv2d", "tempearture": spec.tau}}


CASCADE_STAGES = (  # (IoU threshold, box-delta target stds) of mmdet's Cascade Mask R-CNN
    (0.5, [0.1, 0.1, 0.2, 0.2]),
    (0.6, [0.05, 0.05, 0.1, 0.1]),
    (0.7, [0.033, 0.033, 0.067, 0.067]),
)


def cascade(mask_rcnn: dict) -> dict:
    """Cascade Mask R-CNN from a Mask R-CNN config: three box stages of rising IoU, each with
    the same classifier and loss (so Seesaw is in all three), class-agnostic regression, and
    a mask head per stage (mmdet copies the one given)."""
    model = copy.deepcopy(mask_rcnn)
    model["type"] = "CascadeRCNN"
    roi_head, rcnn = model["roi_head"], model["train_cfg"]["rcnn"]
    roi_head["type"] = "CascadeRoIHead"
    roi_head["num_stages"] = len(CASCADE_STAGES)
    roi_head["stage_loss_weights"] = [1.0, 0.5, 0.25]
    roi_head["bbox_head"] = [
        {
            **roi_head["bbox_head"],
            "reg_class_agnostic": True,
            "bbox_coder": {**roi_head["bbox_head"]["bbox_coder"], "target_stds": stds},
        }
        for _, stds in CASCADE_STAGES
    ]
    model["train_cfg"]["rcnn"] = [
        {
            **rcnn,
            "assigner": {
                **rcnn["assigner"],
                "pos_iou_thr": iou,
                "neg_iou_thr": iou,
                "min_pos_iou": iou,
                "match_low_quality": False,
            },
        }
        for iou, _ in CASCADE_STAGES
    ]
    return model


def cascade_variant(cascade_model: dict, model: str, num_classes: int) -> dict:
    """Table 13's cascades from a Cascade Mask R-CNN config (returned as is for
    "cascade_mask_rcnn"): "htc" (HTC without its semantic branch: LVIS has no semantic
    annotations) or "htc_lite" (Appendix D.1). The method parts of the box and mask heads
    (loss, NLA, normalized masks) carry over."""
    model_cfg = copy.deepcopy(cascade_model)
    roi_head = model_cfg["roi_head"]
    if model == "htc":
        # mmdet's HybridTaskCascade: box and mask stages interleaved, the mask features of
        # each stage flowing into the next (HTCMaskHead), as its htc-without-semantic config.
        model_cfg["type"] = "HybridTaskCascade"
        roi_head.update(type="HybridTaskCascadeRoIHead", interleaved=True, mask_info_flow=True)
        mask = roi_head["mask_head"]
        # the flow adds the previous stage's features to this one's RoI features: the mask
        # head must be as wide as its input (it is in mmdet's 256-channel configs)
        roi_head["mask_head"] = [
            {
                **mask,
                "type": "HTCMaskHead",
                "with_conv_res": stage > 0,
                "conv_out_channels": mask["in_channels"],
            }
            for stage in range(len(CASCADE_STAGES))
        ]
    elif model == "htc_lite":
        # HTC-Lite: a global context encoder (SCNet's, the paper's [57]: convolutions and
        # global average pooling on the coarsest FPN level, an fc trained with binary
        # cross-entropy on the categories in the image) whose vector is added to the RoI
        # features of the box and mask heads, and one mask head, at the last stage. mmdet's
        # SCNetRoIHead without its semantic and feature-relay branches is exactly that
        # (htc_lite.HTCLiteRoIHead: its mask prediction without the relay).
        channels = roi_head["bbox_roi_extractor"]["out_channels"]
        roi_head["type"] = "HTCLiteRoIHead"
        roi_head["bbox_head"] = [
            {**head, "type": "SCNetBBoxHead", "num_shared_fcs": 2} for head in roi_head["bbox_head"]
        ]
        roi_head["glbctx_head"] = {
            "type": "GlobalContextHead",
            "num_convs": 4,
            "in_channels": channels,
            "conv_out_channels": channels,
            "num_classes": num_classes,
            "loss_weight": 3.0,  # SCNet's
            "conv_to_res": True,
        }
    return model_cfg


def finetune_classifier(config: dict, pretrained: str, **hook: str) -> None:
    """Start from `pretrained` and train only a classifier (hooks.ClassifierFinetuneHook):
    by default the box classifiers' last layer (decoupled training, Table 9); `hook` sets
    the hook's own arguments (Table 12's dual head: trainable="dual_cls")."""
    config["load_from"] = pretrained
    config["custom_hooks"].append({"type": "ClassifierFinetuneHook", **hook})
    # The frozen parameters get no gradient, which DDP must be told about.
    config["model_wrapper_cfg"] = {
        "type": "MMDistributedDataParallel",
        "find_unused_parameters": True,
    }


def suite_hooks(*extra: dict) -> dict:
    """What every config needs for the suite: its mmdet plugin and the hooks that leave the
    run's state on disk (hooks.py), then `extra` hooks."""
    return {
        "custom_imports": {"imports": ["seesaw_repro.mmdet_plugin"], "allow_failed_imports": False},
        "custom_hooks": [
            {"type": "ProgressFileHook"},
            {"type": "MetricsFileHook"},
            {"type": "RandomStateHook"},
            {"type": "StopOnSignalHook"},
            *extra,
        ],
    }


def suite_parts(spec: RunSpec, val_ann_file: str) -> dict:
    """The suite's hooks (suite_hooks), with Figure 3's gradient statistics or Figure 1's
    accuracy when asked for, the LVIS evaluation of lvis_eval.py, which keeps each
    category's AP (Figure 4), and the spec's seed."""
    return {
        "randomness": {"seed": spec.seed},
        **suite_hooks(
            *([{"type": "GradientStatsHook"}] if spec.gradient_stats else []),
            *([{"type": "ClassificationAccuracyHook"}] if spec.classification_accuracy else []),
            *([{"type": "InferenceSpeedHook"}] if spec.inference_speed else []),
        ),
        "val_evaluator": {
            "type": "FastLVISMetric",
            "ann_file": val_ann_file,
            "metric": ["bbox", "segm"],
            "per_category_file": f"{WORK_DIR}/{PER_CATEGORY_FILE}",
        },
    }


def test_dev(config: dict, trained: str) -> None:
    """Turn a trained run's config into its test-dev job: load `trained`, predict on the
    test-dev images, and write the detections as LVIS result files (RUN_DIR/test-dev.*.json)
    for the evaluation server, which alone has the test-dev annotations."""
    config["load_from"] = trained
    config["seesaw"]["job"] = "test-dev"
    config.setdefault("test_dataloader", copy.deepcopy(config["val_dataloader"]))
    config.setdefault("test_cfg", {"type": "TestLoop"})
    dataset = config["test_dataloader"]["dataset"]
    dataset["ann_file"] = TEST_DEV_INFO
    dataset["pipeline"] = [t for t in dataset["pipeline"] if t["type"] != "LoadAnnotations"]
    config["test_evaluator"] = {
        "type": "LVISMetric",
        "ann_file": f"{DATA_ROOT}/{TEST_DEV_INFO}",
        "metric": ["bbox", "segm"],
        "format_only": True,
        "outfile_prefix": f"{WORK_DIR}/test-dev",
    }
