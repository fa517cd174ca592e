"""Presets: the scale of the experiments. `tiny` runs on a CPU on generated data; `paper`
is Section 4.1 of the paper on LVIS v1. Both take the method parts from methods.py."""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmengine.config import Config

from seesaw_repro.data import synth
from seesaw_repro.data.synth import TEST_DEV_INFO
from seesaw_repro.errors import UserError
from seesaw_repro.paper.challenge import (
    DCN_V2,
    ChallengeScale,
    model_steps,
    norm_cfg,
    train_pipeline,
    training_spec,
)
from seesaw_repro.paper.methods import (
    DATA_ROOT,
    SCHEDULES,
    RunSpec,
    bbox_head_method,
    cascade,
    cascade_variant,
    mask_head_method,
    suite_parts,
)


@dataclass(frozen=True)
class TinyPreset:
    """A CPU-sized stand-in for the paper's setup on the generated dataset (see synth.py).

    Scale, not method: a ResNet-18 of 1/4 width trained from scratch, 128 px images, an
    iteration-based schedule whose learning-rate steps fall where the paper's schedules put
    them (2x: 16/24 and 22/24 of the way). Table 12's sizes are the paper's times 128/1333
    (its images are 128 px where the paper's are 1333), without flips (a mirrored digit is
    no longer that digit); its ResNeSt-200 is a ResNeSt-50 of 1/4 width, its FPG 3 stacks
    deep, not 9.
    """

    name: str = "tiny"
    synth: synth.SynthSpec = synth.SynthSpec()
    # 800 iterations of 4 images, not 400 of 8: the same images seen, the same learning rate
    # per image (the linear scaling rule), twice the updates, at the same CPU time (a
    # 4-image iteration costs 0.52x an 8-image one here). Table 2's full Seesaw vs CE at
    # seeds 0-2 went from +4.1 AP [-7.3, +15.4] (the NLA rows' sd 4.5-5 AP: by seed, models
    # learnt to classify faster or slower) to +7.1 [+5.6, +8.7], sd 1.8 (issue 18,
    # scripts/pretrained_start.py table2 W).
    iters_2x: int = 800
    batch_size: int = 4
    lr: float = 0.01
    base_channels: int = 16
    fpn_channels: int = 64
    # LVIS keeps 300 detections per image over 1203 categories, a quarter of one per category:
    # the cap is what costs a rare category whose scores a frequent one suppresses (its
    # detections fall out of the image's 300). At 30 categories the same pressure is 8
    # (300 x 30 / 1203); at 100, as before, the cap cost nothing: Table 2's runs at 3 seeds,
    # evaluated on 400 val images, gave CE an AP_r of 7.7 at 100 detections and 0.9 at 8,
    # full Seesaw 6.6 and 5.6 (issue 18, scripts/val_noise.py).
    detections_per_image: int = 8
    cost_unit = "CPU-core minutes"
    test_dev_files = (TEST_DEV_INFO,)  # its test-dev lists the val images
    challenge = ChallengeScale(
        train_long_edges=(74, 172),
        edge_step=8,
        crop=123,
        test_long_edges=(115, 134, 154, 173, 192),
        flip=False,
        mask_iou_fc=128,
        fpg_stacks=3,
    )

    def max_iters(self, schedule: str) -> int:
        """Training iterations for a paper schedule name (2x: iters_2x)."""
        return self.iters_2x * SCHEDULES[schedule][0] // SCHEDULES["2x"][0]

    def config(self, spec: RunSpec, counts_checkpoint: str | None = None) -> dict:
        """The config of `spec` at this scale (placeholders for paths)."""
        return _tiny_config(spec, self, counts_checkpoint)

    def cost(self, spec: RunSpec) -> float:
        """Estimated CPU-core minutes of one run: measured (2 cores, one run per core), about
        0.37 s per 8-image iteration of Mask R-CNN plus 10 s of evaluation (Table 2: 18 runs
        of 400 iterations, 157-170 s each), so 0.19 s per 4-image one (0.52x as much,
        measured), times the paper's relative cost of the model's parts (relative_cost) but
        the backbone's: the tiny ResNeSt costs about the R-18's. Table 12's FPG row then came
        to 1.8 s per 8-image iteration (measured before: 1.5-1.7)."""
        if spec.split == "test-dev":
            return 0.5  # prediction only
        if spec.test_aug:  # prediction only, once per view
            return 0.5 * self.challenge.test_views
        iters = self.max_iters(training_spec(spec).schedule)
        return (iters * 0.19 * relative_cost(spec, backbone=False) + 10) / 60

    def default_data_root(self, work_dir: Path) -> Path:
        """Where `seesaw repro` generates this preset's dataset when no data root is given."""
        return Path(work_dir) / "data" / f"tiny-lvis-{self.synth.digest}"

    def prepare_data(self, data_root: Path | None, work_dir: Path) -> Path:
        """Check the given data root, or generate the dataset under `work_dir` (once)."""
        if data_root is not None:
            synth.check(data_root, self.synth)
            return Path(data_root)
        return synth.ensure(self.default_data_root(work_dir), self.synth)


TINY = TinyPreset()


def _tail_fraction(preset: TinyPreset) -> float:
    # RFS's threshold 1e-3 on LVIS v1's 100k training images oversamples the categories seen
    # in fewer than 100 images (rare and common); EQL's lambda (1.76e-3 on LVIS v0.5's 57k
    # images) marks the same boundary as tail. On the generated train split that boundary is:
    return synth.COMMON_MAX_IMAGES / preset.synth.num_train_images


# The tiny ResNeSt, trained from scratch with BN at lr 0.02, diverges: gradient norm ~240 at
# first, NaN at iteration ~70 with CE; clipped (as mmdet's objects365 configs clip) it
# learns for a while, then from iteration ~200 (Seesaw) or ~440 (CE) the gradient norm
# jumps to hundreds or thousands, largest in the stem and the first stages, and the RPN
# forgets (its loss back from 0.07 to 0.27). The split attention batch-normalises
# globally pooled features: over 8 images of the homogeneous generated data their variance
# is near zero (running_var 1e-4 seen), which BN's division amplifies. GroupNorm has no
# batch statistics; the tiny ResNeSt uses it, in its backbone only (not measured beyond
# one run per row).
TINY_RESNEST_CLIP_GRAD = {"max_norm": 35, "norm_type": 2}
TINY_RESNEST_NORM = {"type": "GN", "num_groups": 8, "requires_grad": True}


def _tiny_backbone(spec: RunSpec, preset: TinyPreset) -> tuple[dict, list[int]]:
    """The backbone's config and its stages' widths: tiny stand-ins of the paper's."""
    common = {
        "base_channels": preset.base_channels,
        "num_stages": 4,
        "out_indices": (0, 1, 2, 3),
        "frozen_stages": -1,
        "norm_cfg": norm_cfg(spec),
        "norm_eval": False,
        "style": "pytorch",
    }
    if spec.backbone == "resnest200_dcn":  # bottleneck blocks: 4x wider outputs
        backbone = {
            "type": "ResNeSt",
            "depth": 50,
            "stem_channels": 2 * preset.base_channels,
            "radix": 2,
            "reduction_factor": 4,
            "avg_down_stride": True,
            "dcn": {**DCN_V2, "fallback_on_stride": False},
            "stage_with_dcn": (False, True, True, True),
            **common,
        }
        return backbone, [4 * preset.base_channels * 2**i for i in range(4)]
    depth = {"r50": 18, "r101": 34}[spec.backbone]  # deeper for r101
    return {"type": "ResNet", "depth": depth, **common}, [
        preset.base_channels * 2**i for i in range(4)
    ]


def _tiny_config(spec: RunSpec, preset: TinyPreset, counts_checkpoint: str | None) -> dict:
    """The config of `spec` at the tiny scale: model, data, schedule and runtime."""
    num_classes = preset.synth.num_categories
    model = _tiny_mask_rcnn(spec, preset, counts_checkpoint)
    if spec.model != "mask_rcnn":
        model = cascade_variant(cascade(model), spec.model, num_classes)
    model_steps(spec, model, num_classes, preset.challenge)
    if spec.backbone == "resnest200_dcn":  # after the SyncBN step, which sets BN everywhere
        model["backbone"]["norm_cfg"] = TINY_RESNEST_NORM
    return {
        **suite_parts(spec, f"{DATA_ROOT}/annotations/lvis_v1_val.json"),
        "default_scope": "mmdet",
        # Part of the run id: the same method on other data is another run.
        "seesaw": {"preset": preset.name, "synth": asdict(preset.synth)},
        "model": model,
        **_tiny_dataloaders(spec, preset),
        **_tiny_schedule(spec, preset),
        **_tiny_runtime(preset.max_iters(spec.schedule)),
    }


def _tiny_dataloaders(spec: RunSpec, preset: TinyPreset) -> dict:
    """Train (RFS-wrapped where the row says so) and val dataloaders on the generated data."""
    # the category order synth.generate writes
    classes = tuple(f"digit_{d}_{c}" for c in synth.COLOURS for d in range(10))
    size = preset.synth.canvas
    scales = [(s, s) for s in (size - 16, size - 8, size, size + 8, size + 16)]
    train_dataset: dict[str, Any] = {
        "type": "LVISV1Dataset",
        "data_root": DATA_ROOT,
        "ann_file": "annotations/lvis_v1_train.json",
        "data_prefix": {"img": ""},
        "metainfo": {"classes": classes},
        "filter_cfg": {"filter_empty_gt": True, "min_size": 4},
        "pipeline": train_pipeline(
            spec,
            [
                {"type": "LoadImageFromFile"},
                {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
                {"type": "RandomChoiceResize", "scales": scales, "keep_ratio": True},
                # No flip: a mirrored digit is no longer that digit.
                {"type": "PackDetInputs"},
            ],
            preset.challenge,
        ),
    }
    if spec.sampler == "rfs":
        train_dataset = {
            "type": "ClassBalancedDataset",
            "oversample_thr": _tail_fraction(preset),
            "dataset": train_dataset,
        }
    val_dataset = {
        "type": "LVISV1Dataset",
        "data_root": DATA_ROOT,
        "ann_file": "annotations/lvis_v1_val.json",
        "data_prefix": {"img": ""},
        "metainfo": {"classes": classes},
        "test_mode": True,
        "pipeline": [
            {"type": "LoadImageFromFile"},
            {"type": "Resize", "scale": (size, size), "keep_ratio": True},
            {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
            {
                "type": "PackDetInputs",
                "meta_keys": ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
            },
        ],
    }
    return {
        "train_dataloader": {
            "batch_size": preset.batch_size,
            "num_workers": 0,
            "persistent_workers": False,
            "sampler": {"type": "InfiniteSampler", "shuffle": True},
            "batch_sampler": {"type": "AspectRatioBatchSampler"},
            "dataset": train_dataset,
        },
        "val_dataloader": {
            "batch_size": 1,
            "num_workers": 0,
            "persistent_workers": False,
            "drop_last": False,
            "sampler": {"type": "DefaultSampler", "shuffle": False},
            "dataset": val_dataset,
        },
    }


def _tiny_mask_rcnn(spec: RunSpec, preset: TinyPreset, counts_checkpoint: str | None) -> dict:
    """Mask R-CNN with the tiny backbone and narrow heads, the row's method in its heads."""
    num_classes = preset.synth.num_categories
    backbone, widths = _tiny_backbone(spec, preset)
    fpn = preset.fpn_channels
    bbox_head = {
        "type": "Shared2FCBBoxHead",
        "in_channels": fpn,
        "fc_out_channels": 128,
        "roi_feat_size": 7,
        "bbox_coder": {
            "type": "DeltaXYWHBBoxCoder",
            "target_means": [0.0, 0.0, 0.0, 0.0],
            "target_stds": [0.1, 0.1, 0.2, 0.2],
        },
        "reg_class_agnostic": False,
        "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
        **bbox_head_method(spec, num_classes, _tail_fraction(preset), counts_checkpoint),
    }
    mask_head = {
        "type": "FCNMaskHead",
        "num_convs": 2,
        "in_channels": fpn,
        "conv_out_channels": fpn // 2,
        "num_classes": num_classes,
        "loss_mask": {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0},
        **mask_head_method(spec),
    }
    return {
        "type": "MaskRCNN",
        "data_preprocessor": {
            "type": "DetDataPreprocessor",
            "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375],
            "bgr_to_rgb": True,
            "pad_mask": True,
            "pad_size_divisor": 32,
        },
        "backbone": backbone,
        "neck": {"type": "FPN", "in_channels": widths, "out_channels": fpn, "num_outs": 5},
        "rpn_head": _tiny_rpn_head(fpn),
        "roi_head": {
            "type": "StandardRoIHead",
            "bbox_roi_extractor": _roi_extractor(fpn, 7),
            "bbox_head": bbox_head,
            "mask_roi_extractor": _roi_extractor(fpn, 14),
            "mask_head": mask_head,
        },
        "train_cfg": _tiny_train_cfg(),
        "test_cfg": _tiny_test_cfg(preset),
    }


def _tiny_rpn_head(fpn: int) -> dict:
    return {
        "type": "RPNHead",
        "in_channels": fpn,
        "feat_channels": fpn,
        "anchor_generator": {
            "type": "AnchorGenerator",
            "scales": [4],  # anchors of 16-256 px: the digits are 15-40 px
            "ratios": [0.5, 1.0, 2.0],
            "strides": [4, 8, 16, 32, 64],
        },
        "bbox_coder": {
            "type": "DeltaXYWHBBoxCoder",
            "target_means": [0.0, 0.0, 0.0, 0.0],
            "target_stds": [1.0, 1.0, 1.0, 1.0],
        },
        "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
        "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
    }


def _roi_extractor(channels: int, output_size: int) -> dict:
    return {
        "type": "SingleRoIExtractor",
        "roi_layer": {"type": "RoIAlign", "output_size": output_size, "sampling_ratio": 0},
        "out_channels": channels,
        "featmap_strides": [4, 8, 16, 32],
    }


def _max_iou_assigner(pos: float, neg: float, min_pos: float) -> dict:
    return {
        "type": "MaxIoUAssigner",
        "pos_iou_thr": pos,
        "neg_iou_thr": neg,
        "min_pos_iou": min_pos,
        "match_low_quality": True,
        "ignore_iof_thr": -1,
    }


def _tiny_train_cfg() -> dict:
    """Mask R-CNN's assigners and samplers, with fewer anchors and RoIs per image."""
    return {
        "rpn": {
            "assigner": _max_iou_assigner(0.7, 0.3, 0.3),
            "sampler": {
                "type": "RandomSampler",
                "num": 64,
                "pos_fraction": 0.5,
                "neg_pos_ub": -1,
                "add_gt_as_proposals": False,
            },
            "allowed_border": -1,
            "pos_weight": -1,
            "debug": False,
        },
        "rpn_proposal": {
            "nms_pre": 500,
            "max_per_img": 200,
            "nms": {"type": "nms", "iou_threshold": 0.7},
            "min_bbox_size": 0,
        },
        "rcnn": {
            "assigner": _max_iou_assigner(0.5, 0.5, 0.5),
            "sampler": {
                "type": "RandomSampler",
                "num": 64,  # RoIs per image; the mask head's cost grows with the positives
                "pos_fraction": 0.25,
                "neg_pos_ub": -1,
                "add_gt_as_proposals": True,
            },
            "mask_size": 28,
            "pos_weight": -1,
            "debug": False,
        },
    }


def _tiny_test_cfg(preset: TinyPreset) -> dict:
    return {
        "rpn": {
            "nms_pre": 300,
            "max_per_img": 100,
            "nms": {"type": "nms", "iou_threshold": 0.7},
            "min_bbox_size": 0,
        },
        "rcnn": {
            "score_thr": 1e-3,  # as the paper
            "nms": {"type": "nms", "iou_threshold": 0.5},
            "max_per_img": preset.detections_per_image,
            "mask_thr_binary": 0.5,
        },
    }


def _tiny_schedule(spec: RunSpec, preset: TinyPreset) -> dict:
    """SGD over the preset's iterations, the learning rate stepped where the paper's is."""
    max_iters = preset.max_iters(spec.schedule)
    epochs, steps = SCHEDULES[spec.schedule]
    return {
        "train_cfg": {
            "type": "IterBasedTrainLoop",
            "max_iters": max_iters,
            "val_interval": max_iters,
        },
        "val_cfg": {"type": "ValLoop"},
        "optim_wrapper": {
            "type": "OptimWrapper",
            "optimizer": {"type": "SGD", "lr": preset.lr, "momentum": 0.9, "weight_decay": 1e-4},
            **({"clip_grad": TINY_RESNEST_CLIP_GRAD} if spec.backbone == "resnest200_dcn" else {}),
        },
        "param_scheduler": [
            {"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": 50},
            {
                "type": "MultiStepLR",
                "by_epoch": False,
                "begin": 0,
                "end": max_iters,
                "milestones": [max_iters * step // epochs for step in steps],
                "gamma": 0.1,
            },
        ],
    }


def _tiny_runtime(max_iters: int) -> dict:
    """Hooks, logging and environment: checkpoints six times a run, keeping two."""
    return {
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": 20},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": {
                "type": "CheckpointHook",
                "by_epoch": False,
                "interval": max(1, max_iters // 6),
                # mmengine deletes the oldest checkpoint *before* writing the next one; with two
                # kept, a kill during a write still leaves the previous one to resume from.
                "max_keep_ckpts": 2,
            },
            "sampler_seed": {"type": "DistSamplerSeedHook"},
            "visualization": {"type": "DetVisualizationHook"},
        },
        "env_cfg": {
            "cudnn_benchmark": False,
            "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
            "dist_cfg": {"backend": "nccl"},
        },
        "vis_backends": [{"type": "LocalVisBackend"}],
        "visualizer": {
            "type": "DetLocalVisualizer",
            "vis_backends": [{"type": "LocalVisBackend"}],
            "name": "visualizer",
        },
        "log_processor": {"type": "LogProcessor", "window_size": 20, "by_epoch": False},
        "log_level": "INFO",
        "load_from": None,
        # job.py resumes when the run dir has a checkpoint (mmdet's tools/train.py: --resume).
        "resume": False,
    }


# found without importing mmdet (and torch): commands that only plan or report stay light
MMDET_CONFIGS = (
    Path(importlib.util.find_spec("mmdet").submodule_search_locations[0]) / ".mim" / "configs"
)
# Training cost relative to Mask R-CNN. Cascade: 16.1 / 11.2 fps at inference (mmdetection's
# model zoo). HTC w/o semantic and HTC-Lite: assumptions, not measured (HTC's interleaved
# mask heads cost more than the cascade's; HTC-Lite has one mask head, Appendix D.1).
CASCADE_COST = {"cascade_mask_rcnn": 1.44, "htc": 1.8, "htc_lite": 1.5}
# Table 12's parts, relative to the same model without them: assumptions, not measured
# (ResNeSt-200 with DCNv2 against R-50; TSD's extra pooling and branches; FPG's 9 stacks;
# the challenge augmentation's larger images, up to 1792 px then cropped to 1280).
CHALLENGE_COST = {
    ("backbone", "resnest200_dcn"): 3.0,
    ("box_head", "tsd"): 1.3,
    ("neck", "fpg"): 1.5,
    ("augment", "challenge"): 1.5,
    ("mask_scoring", True): 1.05,
    ("mask_upsample", "carafe"): 1.05,
}


def relative_cost(spec: RunSpec, backbone: bool = True) -> float:
    """Training cost of `spec`'s model relative to Mask R-CNN (CASCADE_COST, CHALLENGE_COST;
    without the backbone's factor if not `backbone`)."""
    factor = CASCADE_COST.get(spec.model, 1.0)
    for (field, value), part in CHALLENGE_COST.items():
        if getattr(spec, field) == value and (backbone or field != "backbone"):
            factor *= part
    return factor


LVIS_V1_TRAIN_IMAGES = 100_170
LVIS_V1_FILES = (
    "annotations/lvis_v1_train.json",
    "annotations/lvis_v1_val.json",
    "train2017",
    "val2017",
)


def mmdet_config(*files: str) -> dict:
    """mmdet's own config files (paths under its configs/), merged in order, as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "merged.py"
        stub.write_text(f"_base_ = {[str(MMDET_CONFIGS / f) for f in files]!r}\n")
        return Config.fromfile(str(stub)).to_dict()


@dataclass(frozen=True)
class PaperPreset:
    """Section 4.1 and the table captions, on LVIS v1, built on mmdet's own base configs.

    Mask R-CNN / Cascade Mask R-CNN with ResNet-50/101 + FPN from ImageNet weights, batch 16
    (2 images x 8 GPUs; the learning rate scales linearly with the GPUs actually used, by
    mmengine's auto_scale_lr), lr 0.02, 2x = 24 epochs with steps at 16 and 22 (1x: 12; 8,
    11), multi-scale training 640-800 / 1333 with flip, single-scale test 1333 x 800, score
    threshold 1e-3, 300 detections per image, RFS threshold 1e-3. EQL's tail: categories in
    fewer than 100 training images (100 / 100,170 on v1), near the boundary EQL's lambda =
    1.76e-3 drew on LVIS v0.5's 57k images (100.8 images; recipes/table01.toml). Where this
    departs from mmdet's released seesaw configs: PAPER_VS_MMDET.
    """

    name: str = "paper"
    num_classes: int = 1203
    rfs_threshold: float = 1e-3
    score_threshold: float = 1e-3
    detections_per_image: int = 300
    batch_size: int = 16  # total, as the paper
    challenge = ChallengeScale(
        train_long_edges=(768, 1792),
        edge_step=32,
        crop=1280,
        test_long_edges=(1200, 1400, 1600, 1800, 2000),
        flip=True,
        mask_iou_fc=1024,
        fpg_stacks=9,
    )

    def config(self, spec: RunSpec, counts_checkpoint: str | None = None) -> dict:
        """The config of `spec` on LVIS v1 (placeholders for paths)."""
        return _paper_config(spec, self, counts_checkpoint)

    cost_unit = "GPU-hours (V100)"
    test_dev_files = (TEST_DEV_INFO, "test2017")  # LVIS v1's image info, COCO's images

    def default_data_root(self, work_dir: Path) -> Path | None:
        """None: LVIS v1 has no default place; --data-root names it."""
        return None

    def cost(self, spec: RunSpec) -> float:
        """Estimated V100 GPU-hours of one run, a lower bound: mmdetection trains Mask R-CNN
        R-50-FPN at 53 images/s on 8 V100s on COCO (detectron2's docs/notes/benchmarks.md);
        R-101 costs 1.25x (0.5665 / 0.4536 s/iter, maskrcnn-benchmark's MODEL_ZOO.md) and
        Cascade 1.44x (16.1 / 11.2 fps at inference, mmdetection's model zoo); Table 12's
        parts as CHALLENGE_COST. LVIS's 1203 classes, its denser images and RFS's repeated
        images (mean repeat factor, which depends on the data) make real runs longer; a
        fine-tune (decoupled, dual head) is counted as a full training run. A test-dev run
        only predicts: about 20,000 images at mmdetection's 16.1 images/s for Mask R-CNN
        R-50-FPN (its model zoo); a multi-scale flip test predicts the 19,809 val images
        once per view."""
        epochs = SCHEDULES[training_spec(spec).schedule][0]
        seconds = epochs * LVIS_V1_TRAIN_IMAGES * 8 / 53
        if spec.split == "test-dev":
            seconds = 20_000 / 16.1
        if spec.test_aug:
            seconds = 19_809 * self.challenge.test_views / 16.1
        seconds *= 1.25 if spec.backbone == "r101" else 1.0
        return seconds * relative_cost(spec) / 3600

    def prepare_data(self, data_root: Path | None, work_dir: Path) -> Path:
        """Check that `data_root` holds LVIS v1 as mmdet reads it."""
        if data_root is None:
            raise UserError(
                "the paper preset needs --data-root: a folder with LVIS v1's annotations/"
                "lvis_v1_{train,val}.json and COCO 2017's train2017/ and val2017/ images"
            )
        missing = [f for f in LVIS_V1_FILES if not (Path(data_root) / f).exists()]
        if missing:
            raise UserError(
                f"{data_root} is not an LVIS v1 data root: missing {', '.join(missing)} "
                "(annotations from lvisdataset.org, images from cocodataset.org, 2017 splits)"
            )
        for name in LVIS_V1_FILES:
            if name.endswith(".json"):
                _check_json_object(Path(data_root) / name)
        return Path(data_root)


def _check_json_object(path: Path) -> None:
    """A UserError unless `path` starts with "{" and ends with "}": LVIS v1's train file is
    1 GB, parsed by each run, so only its ends are read here; a truncated download or
    another kind of file is one line now, not a traceback in every job."""
    with open(path, "rb") as file:
        head = file.read(64).lstrip()
        file.seek(max(0, file.seek(0, os.SEEK_END) - 64))
        tail = file.read().rstrip()
    if not (head.startswith(b"{") and tail.endswith(b"}")):
        raise UserError(
            f"{path} is not a whole JSON object (truncated, or another file): download it "
            "again from lvisdataset.org"
        )


PAPER = PaperPreset()

SMOKE = "-smoke"  # a smoke preset's name: its preset's, and this
SMOKE_TRAIN_IMAGES = 2  # one epoch of them: one iteration at the paper's 2 images per GPU
SMOKE_EVAL_IMAGES = 2


@dataclass(frozen=True)
class SmokePreset:
    """A preset's runs cut short (`repro --smoke`): one epoch on the first SMOKE_TRAIN_IMAGES
    training images, then evaluation on the first SMOKE_EVAL_IMAGES; the model, pipeline,
    sampler and evaluator are the preset's (configs.resolve applies `smoke_config` last, to
    every run). The metrics are meaningless (the evaluation still counts every val image);
    what a smoke run shows is that each run gets through."""

    base: PaperPreset

    @property
    def name(self) -> str:
        return f"{self.base.name}{SMOKE}"

    def cost(self, spec: RunSpec) -> float:
        """The preset's cost, scaled to the images trained (a rough bound, evaluation aside)."""
        epochs = SCHEDULES[training_spec(spec).schedule][0]
        return self.base.cost(spec) * SMOKE_TRAIN_IMAGES / (epochs * LVIS_V1_TRAIN_IMAGES)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.base, attribute)  # the data, config and scale of the base preset


def smoke_config(config: dict) -> None:
    """Cut a resolved config to a smoke run, in place (see SmokePreset)."""
    train = config["train_dataloader"]["dataset"]
    train.get("dataset", train)["indices"] = SMOKE_TRAIN_IMAGES  # RFS wraps the LVIS dataset
    for split in ("val", "test"):
        if f"{split}_dataloader" in config:
            config[f"{split}_dataloader"]["dataset"]["indices"] = SMOKE_EVAL_IMAGES
    loop = config["train_cfg"]
    if loop["type"] == "EpochBasedTrainLoop":
        loop.update(max_epochs=1, val_interval=1)
    else:
        loop.update(max_iters=1, val_interval=1)
    config["seesaw"]["smoke"] = True


PRESETS = {preset.name: preset for preset in (TINY, PAPER, SmokePreset(PAPER))}

# Where the paper preset's Seesaw rows differ from mmdet's configs/seesaw_loss/*.py, and why
# (tests/test_paper_preset.py checks every other field is equal).
PAPER_VS_MMDET = {
    "model.roi_head.bbox_head.loss_cls": "the suite's ReproSeesawLoss: equal to mmdet's "
    "SeesawLoss within 1e-6 (tested), and it has the paper's ablations (no objectness, "
    "count sources) and a faster backward",
    "model.test_cfg.rcnn.score_thr": "1e-3 as Sec. 4.1 says; mmdet's configs use 1e-4",
    "auto_scale_lr": "on, so fewer GPUs than 8 keep the paper's lr per image; mmdet: off",
    "default_hooks.checkpoint": "keep the last 2 checkpoints, not all 24",
    "custom_imports": "the suite's mmdet plugin (losses and hooks)",
    "custom_hooks": "the suite's progress and metrics files",
    "seesaw": "the suite's record of the preset (part of the run id)",
    "randomness": "a fixed seed (the spec's; mmdet's configs leave it random), so the rows of a "
    "table at one seed see the same data order and their difference is paired",
    "data_root": "the data root is a placeholder filled in per machine (mmdet: data/lvis_v1/)",
    "train_dataloader.dataset": "same data, under the given data root",
    "val_dataloader.dataset": "same data, under the given data root",
    "test_dataloader.dataset": "same data, under the given data root",
    "val_evaluator": "the suite's FastLVISMetric (lvis_metric.py): lvis-api's numbers (tested), "
    "faster, each category's AP kept for Figure 4; same annotations, under the given data root",
    "test_evaluator": "same annotations, under the given data root",
}


# mmdet's ResNeSt configs (configs/resnest/, 200 layers: 128 stem channels) with mmdet's
# DCNv2 in stages 2-4 (configs/dcnv2/); its norm layers are the spec's (SyncBN in Table 12).
RESNEST200_DCN = {
    "type": "ResNeSt",
    "depth": 200,
    "stem_channels": 128,
    "radix": 2,
    "reduction_factor": 4,
    "avg_down_stride": True,
    "num_stages": 4,
    "out_indices": (0, 1, 2, 3),
    "frozen_stages": 1,
    "norm_eval": False,
    "style": "pytorch",
    "dcn": {**DCN_V2, "fallback_on_stride": False},
    "stage_with_dcn": (False, True, True, True),
    "init_cfg": {"type": "Pretrained", "checkpoint": "open-mmlab://resnest200"},
}


def _paper_config(spec: RunSpec, preset: PaperPreset, counts_checkpoint: str | None) -> dict:
    model_file = (
        "_base_/models/mask-rcnn_r50_fpn.py"
        if spec.model == "mask_rcnn"
        else "_base_/models/cascade-mask-rcnn_r50_fpn.py"  # and HTC, HTC-Lite from it
    )
    config = mmdet_config(
        model_file,
        "_base_/datasets/lvis_v1_instance.py",
        f"_base_/schedules/schedule_{'1x' if spec.schedule == '1x' else '2x'}.py",
        "_base_/default_runtime.py",
    )
    if spec.schedule == "45e":
        epochs, steps = SCHEDULES["45e"]
        config["train_cfg"]["max_epochs"] = epochs
        config["param_scheduler"][1].update(end=epochs, milestones=list(steps))
    model, c = config["model"], preset.num_classes
    if spec.backbone == "r101":
        model["backbone"]["depth"] = 101
        model["backbone"]["init_cfg"]["checkpoint"] = "torchvision://resnet101"
    elif spec.backbone == "resnest200_dcn":
        model["backbone"] = {**copy.deepcopy(RESNEST200_DCN), "norm_cfg": norm_cfg(spec)}
    heads = model["roi_head"]["bbox_head"]
    tail_fraction = synth.COMMON_MAX_IMAGES / LVIS_V1_TRAIN_IMAGES
    for head in heads if isinstance(heads, list) else [heads]:
        head.update(bbox_head_method(spec, c, tail_fraction, counts_checkpoint))
    model["roi_head"]["mask_head"].update({"num_classes": c, **mask_head_method(spec)})
    model["test_cfg"]["rcnn"].update(
        score_thr=preset.score_threshold, max_per_img=preset.detections_per_image
    )
    if spec.model != "mask_rcnn":
        config["model"] = model = cascade_variant(model, spec.model, c)
    model_steps(spec, model, c, preset.challenge)

    train = config["train_dataloader"]["dataset"]  # ClassBalancedDataset(LVISV1Dataset)
    train["oversample_thr"] = preset.rfs_threshold
    train["dataset"]["data_root"] = DATA_ROOT
    pipeline = train["dataset"]["pipeline"]
    train["dataset"]["pipeline"] = train_pipeline(spec, pipeline, preset.challenge)
    if spec.sampler == "random":
        config["train_dataloader"]["dataset"] = train["dataset"]
    val_ann_file = f"{DATA_ROOT}/annotations/lvis_v1_val.json"
    for split in ("val", "test"):
        config[f"{split}_dataloader"]["dataset"]["data_root"] = DATA_ROOT
        config[f"{split}_evaluator"]["ann_file"] = val_ann_file
    config["data_root"] = DATA_ROOT

    max_epochs = config["train_cfg"]["max_epochs"]
    config["train_cfg"]["val_interval"] = max_epochs
    config["auto_scale_lr"] = {"enable": True, "base_batch_size": preset.batch_size}
    config["default_hooks"]["checkpoint"]["max_keep_ckpts"] = 2
    config["seesaw"] = {"preset": preset.name}
    config.update(suite_parts(spec, val_ann_file))
    return config
