"""RunSpec + preset -> a plain mmengine config, and the run id that names it.

The method parts (`_bbox_head_method`, `_mask_head_method`, `_cascade`,
`_finetune_classifier`) are the same in every preset; a preset only chooses the data, the
model's size and the schedule. A config is built with DATA_ROOT and RUNS_DIR as
placeholders: its hash is the run id (so paths never change a run's identity; a run that
needs another's checkpoint has that run's id in its config, hence in its own), and
`materialise` then puts the real paths in.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mmengine.config import Config

from . import synth
from .errors import UserError

DATA_ROOT = "${DATA_ROOT}"
RUNS_DIR = "${RUNS_DIR}"  # where the runs a config depends on keep their checkpoints
RUN_ID_LENGTH = 12


class SpecError(UserError):
    """A recipe or option asks for something the suite cannot build."""


@dataclass(frozen=True)
class RunSpec:
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
    # Decoupled training (Table 9): "" trains end to end; "random" or "rfs" fine-tunes only the
    # box classifier's last layer of a CE model pre-trained 2x with that sampler.
    decoupled: str = ""

    CHOICES = {
        "model": ("mask_rcnn", "cascade_mask_rcnn"),
        "loss": ("seesaw", "eql", "bags"),
        "backbone": ("r50", "r101"),
        "sampler": ("random", "rfs"),
        "schedule": ("1x", "2x"),
        "counts": ("online", "dataset", "checkpoint"),
        "decoupled": ("", "random", "rfs"),
    }

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name} = {getattr(self, name)!r} is not one of {allowed}")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool" and not isinstance(value, bool):
                raise SpecError(f"{field.name} must be true or false, not {value!r}")

    @classmethod
    def field_names(cls) -> set[str]:
        """The keys a recipe may set."""
        return {f.name for f in fields(cls)}


def dependencies(spec: RunSpec) -> dict[str, RunSpec]:
    """The runs whose final checkpoint `spec` needs, by role.

    "pretrained": for a decoupled run, the paper's CE baseline (Table 2's first row: softmax
    cross-entropy with the objectness branch, no NLA) trained 2x with the given sampler, of
    the same model, backbone and mask head. "counts": for Pre-Record counts, the same run
    with online counts.
    """
    needs = {}
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
        )
    if spec.loss == "seesaw" and spec.counts == "checkpoint":
        needs["counts"] = replace(spec, counts="online", gradient_stats=False)
    return needs


def _bbox_head_method(
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


def _mask_head_method(spec: RunSpec) -> dict:
    """Normalized Mask Prediction: the mask head's final 1x1 conv on L2-normalised weights
    and features, times tau (mmdet's NormedConv2d normalises exactly those)."""
    if not spec.norm_mask:
        return {}
    return {"predictor_cfg": {"type": "NormedConv2d", "tempearture": spec.tau}}


@dataclass(frozen=True)
class TinyPreset:
    """A CPU-sized stand-in for the paper's setup on the generated dataset (see synth.py).

    Scale, not method: a ResNet-18 of 1/4 width trained from scratch, 128 px images, an
    iteration-based schedule whose learning-rate steps fall where the paper's 2x schedule
    puts them (16/24 and 22/24 of the way).
    """

    name: str = "tiny"
    synth: synth.SynthSpec = synth.SynthSpec()
    iters_2x: int = 400
    batch_size: int = 8
    lr: float = 0.02
    base_channels: int = 16
    fpn_channels: int = 64

    def max_iters(self, schedule: str) -> int:
        """Training iterations for a paper schedule name."""
        return self.iters_2x if schedule == "2x" else self.iters_2x // 2

    def default_data_root(self, work_dir: Path) -> Path:
        """Where `seesaw repro` generates this preset's dataset when no data root is given."""
        return Path(work_dir) / "data" / f"tiny-lvis-seed{self.synth.seed}"


TINY = TinyPreset()
PRESETS = {TINY.name: TINY}


def _tail_fraction(preset: TinyPreset) -> float:
    # RFS's threshold 1e-3 on LVIS v1's 100k training images oversamples the categories seen
    # in fewer than 100 images (rare and common); EQL's lambda (1.76e-3 on LVIS v0.5's 57k
    # images) marks the same boundary as tail. On the generated train split that boundary is:
    return synth.COMMON_MAX_IMAGES / preset.synth.num_train_images


def _tiny_config(spec: RunSpec, preset: TinyPreset, counts_checkpoint: str | None) -> dict:
    num_classes = preset.synth.num_categories
    classes = tuple(
        f"digit_{d}_{c}" for c in synth.COLOURS for d in range(10)
    )  # the category order synth.generate writes
    size = preset.synth.canvas
    scales = [(s, s) for s in (size - 16, size - 8, size, size + 8, size + 16)]
    max_iters = preset.max_iters(spec.schedule)
    norm = {"type": "BN", "requires_grad": True}
    depth = {"r50": 18, "r101": 34}[spec.backbone]  # tiny stand-ins, deeper for r101
    widths = [preset.base_channels * 2**i for i in range(4)]
    fpn = preset.fpn_channels
    train_dataset: dict[str, Any] = {
        "type": "LVISV1Dataset",
        "data_root": DATA_ROOT,
        "ann_file": "annotations/lvis_v1_train.json",
        "data_prefix": {"img": ""},
        "metainfo": {"classes": classes},
        "filter_cfg": {"filter_empty_gt": True, "min_size": 4},
        "pipeline": [
            {"type": "LoadImageFromFile"},
            {"type": "LoadAnnotations", "with_bbox": True, "with_mask": True},
            {"type": "RandomChoiceResize", "scales": scales, "keep_ratio": True},
            # No flip: a mirrored digit is no longer that digit.
            {"type": "PackDetInputs"},
        ],
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
        **_bbox_head_method(spec, num_classes, _tail_fraction(preset), counts_checkpoint),
    }
    model = {
        "type": "MaskRCNN",
        "data_preprocessor": {
            "type": "DetDataPreprocessor",
            "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375],
            "bgr_to_rgb": True,
            "pad_mask": True,
            "pad_size_divisor": 32,
        },
        "backbone": {
            "type": "ResNet",
            "depth": depth,
            "base_channels": preset.base_channels,
            "num_stages": 4,
            "out_indices": (0, 1, 2, 3),
            "frozen_stages": -1,
            "norm_cfg": norm,
            "norm_eval": False,
            "style": "pytorch",
        },
        "neck": {"type": "FPN", "in_channels": widths, "out_channels": fpn, "num_outs": 5},
        "rpn_head": {
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
        },
        "roi_head": {
            "type": "StandardRoIHead",
            "bbox_roi_extractor": {
                "type": "SingleRoIExtractor",
                "roi_layer": {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0},
                "out_channels": fpn,
                "featmap_strides": [4, 8, 16, 32],
            },
            "bbox_head": bbox_head,
            "mask_roi_extractor": {
                "type": "SingleRoIExtractor",
                "roi_layer": {"type": "RoIAlign", "output_size": 14, "sampling_ratio": 0},
                "out_channels": fpn,
                "featmap_strides": [4, 8, 16, 32],
            },
            "mask_head": {
                "type": "FCNMaskHead",
                "num_convs": 2,
                "in_channels": fpn,
                "conv_out_channels": fpn // 2,
                "num_classes": num_classes,
                "loss_mask": {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0},
                **_mask_head_method(spec),
            },
        },
        "train_cfg": {
            "rpn": {
                "assigner": {
                    "type": "MaxIoUAssigner",
                    "pos_iou_thr": 0.7,
                    "neg_iou_thr": 0.3,
                    "min_pos_iou": 0.3,
                    "match_low_quality": True,
                    "ignore_iof_thr": -1,
                },
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
                "assigner": {
                    "type": "MaxIoUAssigner",
                    "pos_iou_thr": 0.5,
                    "neg_iou_thr": 0.5,
                    "min_pos_iou": 0.5,
                    "match_low_quality": True,
                    "ignore_iof_thr": -1,
                },
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
        },
        "test_cfg": {
            "rpn": {
                "nms_pre": 300,
                "max_per_img": 100,
                "nms": {"type": "nms", "iou_threshold": 0.7},
                "min_bbox_size": 0,
            },
            "rcnn": {
                "score_thr": 1e-3,  # as the paper
                "nms": {"type": "nms", "iou_threshold": 0.5},
                "max_per_img": 100,
                "mask_thr_binary": 0.5,
            },
        },
    }
    if spec.model == "cascade_mask_rcnn":
        model = _cascade(model)
    checkpoint_every = max(1, max_iters // 6)
    return {
        "custom_imports": {"imports": ["seesaw_repro.mmdet_plugin"], "allow_failed_imports": False},
        "default_scope": "mmdet",
        # Part of the run id: the same method on other data is another run.
        "seesaw": {"preset": preset.name, "synth": asdict(preset.synth)},
        "model": model,
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
        "val_evaluator": {
            "type": "LVISMetric",
            "ann_file": f"{DATA_ROOT}/annotations/lvis_v1_val.json",
            "metric": ["bbox", "segm"],
        },
        "train_cfg": {
            "type": "IterBasedTrainLoop",
            "max_iters": max_iters,
            "val_interval": max_iters,
        },
        "val_cfg": {"type": "ValLoop"},
        "optim_wrapper": {
            "type": "OptimWrapper",
            "optimizer": {"type": "SGD", "lr": preset.lr, "momentum": 0.9, "weight_decay": 1e-4},
        },
        "param_scheduler": [
            {"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": 50},
            {
                "type": "MultiStepLR",
                "by_epoch": False,
                "begin": 0,
                "end": max_iters,
                "milestones": [max_iters * 16 // 24, max_iters * 22 // 24],
                "gamma": 0.1,
            },
        ],
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": 20},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": {
                "type": "CheckpointHook",
                "by_epoch": False,
                "interval": checkpoint_every,
                # mmengine deletes the oldest checkpoint *before* writing the next one; with two
                # kept, a kill during a write still leaves the previous one to resume from.
                "max_keep_ckpts": 2,
            },
            "sampler_seed": {"type": "DistSamplerSeedHook"},
            "visualization": {"type": "DetVisualizationHook"},
        },
        "custom_hooks": [
            {"type": "ProgressFileHook"},
            {"type": "MetricsFileHook"},
            *([{"type": "GradientStatsHook"}] if spec.gradient_stats else []),
        ],
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
        "randomness": {"seed": 0},
    }


CASCADE_STAGES = (  # (IoU threshold, box-delta target stds) of mmdet's Cascade Mask R-CNN
    (0.5, [0.1, 0.1, 0.2, 0.2]),
    (0.6, [0.05, 0.05, 0.1, 0.1]),
    (0.7, [0.033, 0.033, 0.067, 0.067]),
)


def _cascade(mask_rcnn: dict) -> dict:
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


def _finetune_classifier(config: dict, pretrained: str) -> None:
    """Decoupled training: start from `pretrained` and train only the box classifiers' last
    layer (hooks.ClassifierFinetuneHook)."""
    config["load_from"] = pretrained
    config["custom_hooks"].append({"type": "ClassifierFinetuneHook"})
    # The frozen parameters get no gradient, which DDP must be told about.
    config["model_wrapper_cfg"] = {
        "type": "MMDistributedDataParallel",
        "find_unused_parameters": True,
    }


def resolve(spec: RunSpec, preset: str) -> dict:
    """The config of `spec` in `preset`, with DATA_ROOT and RUNS_DIR as placeholders."""
    if preset not in PRESETS:
        raise SpecError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    needs = {
        role: final_checkpoint(resolve(dep, preset)) for role, dep in dependencies(spec).items()
    }
    config = _tiny_config(spec, PRESETS[preset], needs.get("counts"))
    if "pretrained" in needs:
        _finetune_classifier(config, needs["pretrained"])
    return config


def final_checkpoint(config: dict) -> str:
    """Where the run of `config` leaves its last checkpoint, under the RUNS_DIR placeholder."""
    loop = config["train_cfg"]
    if loop["type"] == "IterBasedTrainLoop":
        name = f"iter_{loop['max_iters']}.pth"
    else:
        name = f"epoch_{loop['max_epochs']}.pth"
    return f"{RUNS_DIR}/{run_id(config)}/{name}"


def run_id(config: dict) -> str:
    """The run's identity: a hash of its resolved (placeholder) config's content."""
    canonical = json.dumps(config, sort_keys=True, default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:RUN_ID_LENGTH]


def materialise(
    config: dict, data_root: Path, work_dir: Path, runs_dir: Path | None = None
) -> Config:
    """Put the real data root, work dir and runs dir (default: work dir's parent, where its
    sibling runs are) into a resolved config."""
    runs_dir = Path(runs_dir if runs_dir is not None else Path(work_dir).parent).resolve()

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(fill(v) for v in value)
        if isinstance(value, str):
            value = value.replace(DATA_ROOT, str(Path(data_root).resolve()))
            return value.replace(RUNS_DIR, str(runs_dir))
        return value

    filled = fill(config)
    filled["work_dir"] = str(Path(work_dir).resolve())
    return Config(filled)
