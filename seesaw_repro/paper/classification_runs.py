"""Tables 10-11 as runs: what a classification row trains (ClassificationSpec), and the two
scales it trains at: `paper` (Sec. 4.4, ResNeXt-50 on ImageNet-LT) and `tiny` (a small CNN
on long-tailed MNIST digits, see imagenet_lt.DigitsLTSpec). The parts are classification.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seesaw_repro.data import imagenet_lt
from seesaw_repro.errors import UserError
from seesaw_repro.paper.methods import DATA_ROOT, SpecError, SpecFields, suite_hooks

TASK = "imagenet_lt"


@dataclass(frozen=True)
class ClassificationSpec(SpecFields):
    """One row of Tables 10-11: the loss, and the second stage of a decoupled pipeline
    (Kang et al. 2020) on the end-to-end CE model, if any."""

    loss: str = "ce"  # "ce" | "focal" | "cb_focal" | "eql" | "seesaw"
    # "" end to end; on the CE model: "crt" re-trains the classifier with `loss` and a
    # class-balanced sampler, "lws" learns a scale per class, "tau_norm" and "ncm" fit post hoc
    decoupled: str = ""
    p: float = 0.8
    q: float = 1.0  # Sec. 4.4: q = 1 on ImageNet-LT (Table 11 sweeps it)
    seed: int = 0

    CHOICES = {
        "loss": ("ce", "focal", "cb_focal", "eql", "seesaw"),
        "decoupled": ("", "crt", "lws", "tau_norm", "ncm"),
    }

    def __post_init__(self) -> None:
        self.check_fields()
        if self.decoupled in ("lws", "tau_norm", "ncm") and self.loss != "ce":
            raise SpecError(f"decoupled = {self.decoupled!r} is defined for loss = 'ce' only")

    @property
    def summary(self) -> str:
        """A few words for `seesaw plan`."""
        stage = f" + {self.decoupled}" if self.decoupled else ""
        q = f" q={self.q:g}" if self.loss == "seesaw" else ""
        return f"classifier {self.loss}{q}{stage}"

    def dependencies(self) -> dict[str, ClassificationSpec]:
        """A decoupled stage needs the end-to-end CE model of the same seed ("pretrained")."""
        return {"pretrained": ClassificationSpec(seed=self.seed)} if self.decoupled else {}


@dataclass(frozen=True)
class ClassificationScale:
    """A preset of the classification tables: data, model size and schedule."""

    name: str
    backbone: dict
    feat_dim: int
    augment: str  # ImageListDataset's
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_per_process: int
    total_batch: int  # the paper's batch, at which `lr` holds (scaled by auto_scale_lr)
    lr: float
    workers: int
    cost_unit: str
    seconds_per_epoch: float  # an end-to-end epoch, in cost_unit's device seconds
    digits: imagenet_lt.DigitsLTSpec | None = None  # the tiny preset's generated data
    num_classes: int = 1000
    epochs: int = 90  # Sec. 4.4: 90 end to end, 10 for a decoupled classifier
    finetune_epochs: int = 10

    def config(self, spec: ClassificationSpec, pretrained: str | None = None) -> dict:
        """The config of `spec` at this scale (placeholders for paths)."""
        return _config(spec, self, pretrained)

    def cost(self, spec: ClassificationSpec) -> float:
        """Estimated cost of one run in `cost_unit` (see seconds_per_epoch): a decoupled
        stage runs the frozen backbone forward only (a third of a training step); a post-hoc
        head passes once over train, val and test."""
        if spec.decoupled in ("ncm", "tau_norm"):
            seconds = self.seconds_per_epoch * 1.6 / 3
        elif spec.decoupled:
            seconds = self.finetune_epochs * self.seconds_per_epoch / 3
        else:
            seconds = self.epochs * self.seconds_per_epoch
        return seconds / (60 if self.cost_unit.startswith("CPU") else 3600)

    def default_data_root(self, work_dir: Path) -> Path | None:
        """Where the tiny preset generates its digits; None: ImageNet-LT has no default."""
        if self.digits is None:
            return None
        return Path(work_dir) / "data" / f"digits-lt-seed{self.digits.seed}"

    def prepare_data(self, data_root: Path | None, work_dir: Path) -> Path:
        """Check the data root, or generate the tiny preset's digits under `work_dir`."""
        if self.digits is not None:
            if data_root is not None:
                imagenet_lt.check_digits(data_root, self.digits)
                return Path(data_root)
            return imagenet_lt.ensure_digits(self.default_data_root(work_dir), self.digits)
        if data_root is None:
            raise UserError(
                "the paper preset of Tables 10-11 needs --data-root: the ImageNet-2012 folder "
                "(train/, val/) with ImageNet-LT's ImageNet_LT_{train,val,test}.txt beside them"
            )
        imagenet_lt.check(data_root, self.num_classes, imagenet_lt.SPLIT_LINES)
        return Path(data_root)


IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)

PRESETS = {
    "tiny": ClassificationScale(
        name="tiny",
        backbone={"type": "DigitsCNN", "channels": (16, 32, 64)},
        feat_dim=64,
        augment="digits",
        mean=(33.3,) * 3,  # MNIST's pixel mean and std
        std=(78.6,) * 3,
        batch_per_process=64,
        total_batch=64,
        lr=0.2 * 64 / 512,  # the paper's lr per image
        workers=0,
        cost_unit="CPU-core minutes",
        seconds_per_epoch=0.5,  # measured: see the README
        digits=imagenet_lt.DigitsLTSpec(),
        num_classes=imagenet_lt.DigitsLTSpec.num_classes,
        epochs=30,  # a third of the paper's 90: enough for digits (scale, not method)
    ),
    "paper": ClassificationScale(
        name="paper",
        backbone={
            "type": "ResNeXt",
            "depth": 50,
            "groups": 32,
            "base_width": 4,
            "out_indices": (3,),
            "norm_cfg": {"type": "BN", "requires_grad": True},
            "style": "pytorch",
        },
        feat_dim=2048,
        augment="imagenet",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        batch_per_process=64,  # x 8 GPUs = the paper's 512
        total_batch=512,
        lr=0.2,
        workers=8,
        cost_unit="GPU-hours (V100)",
        # An assumption, not a measurement: 115,846 images at 300 images/s on one V100
        # (ResNet-50 trains at about 370 images/s in FP32 on a V100, NVIDIA's
        # DeepLearningExamples; ResNeXt-50 32x4d is slower).
        seconds_per_epoch=115_846 / 300,
    ),
}


def _loss(spec: ClassificationSpec, scale: ClassificationScale) -> dict[str, Any]:
    train_split = f"{DATA_ROOT}/{imagenet_lt.split_file(Path(), 'train')}"
    classes = scale.num_classes
    if spec.loss == "seesaw":
        return {
            "type": "SeesawClassificationLoss",
            "num_classes": classes,
            "p": spec.p,
            "q": spec.q,
        }
    if spec.loss == "eql":
        return {
            "type": "SoftmaxEqualizationLoss",
            "split_file": train_split,
            "num_classes": classes,
        }
    if spec.loss in ("focal", "cb_focal"):
        # Cui et al.'s class-balanced focal loss: beta = 0.9999 (their ImageNet choice), gamma 2
        beta = 0.9999 if spec.loss == "cb_focal" else 0.0
        return {
            "type": "LongTailFocalLoss",
            "gamma": 2.0,
            "beta": beta,
            "split_file": train_split,
            "num_classes": classes,
        }
    return {"type": "CrossEntropyLoss", "loss_weight": 1.0}


def _config(
    spec: ClassificationSpec, scale: ClassificationScale, pretrained: str | None
) -> dict[str, Any]:
    """A classification run's config: the model and runtime, then either a post-hoc head
    fitted and tested (NCM, tau-norm) or a training schedule (plain, cRT, LWS)."""
    test_loader = _loader(scale, "test", False, {"type": "DefaultSampler", "shuffle": False})
    evaluator = {
        "type": "ShotGroupAccuracy",
        "train_split_file": _split("train"),
        "num_classes": scale.num_classes,
    }
    config = _model_and_runtime(spec, scale, pretrained)
    if spec.decoupled in ("ncm", "tau_norm"):
        config["seesaw"]["job"] = "evaluate"
        config["custom_hooks"].append(
            {
                "type": "PosthocClassifierHook",
                "train_split_file": _split("train"),
                "val_split_file": _split("val"),
            }
        )
        config.update(
            test_dataloader=test_loader, test_evaluator=evaluator, test_cfg={"type": "TestLoop"}
        )
        return config
    config.update(val_dataloader=test_loader, val_evaluator=evaluator, **_training(spec, scale))
    if spec.decoupled:  # crt, lws: only the classifier or the scales learn
        config["custom_hooks"].append(
            {
                "type": "ClassifierFinetuneHook",
                "scope": "",
                "trainable": "classifier" if spec.decoupled == "crt" else "scales",
                "fresh": spec.decoupled == "crt",
            }
        )
        config["model_wrapper_cfg"] = {
            "type": "MMDistributedDataParallel",
            "find_unused_parameters": True,
        }
    return config


def _split(name: str) -> str:
    return f"{DATA_ROOT}/{imagenet_lt.split_file(Path(), name)}"


def _loader(scale: ClassificationScale, name: str, train: bool, sampler: dict) -> dict:
    return {
        "batch_size": scale.batch_per_process,
        "num_workers": scale.workers,
        "persistent_workers": scale.workers > 0,
        "sampler": sampler,
        "dataset": {
            "type": "ImageListDataset",
            "root": DATA_ROOT,
            "split_file": _split(name),
            "augment": scale.augment,
            "train": train,
        },
    }


def _model_and_runtime(
    spec: ClassificationSpec, scale: ClassificationScale, pretrained: str | None
) -> dict[str, Any]:
    head = spec.decoupled if spec.decoupled in ("lws", "tau_norm", "ncm") else "linear"
    return {
        "default_scope": "mmdet",
        "model": {
            "type": "LongTailClassifier",
            "backbone": scale.backbone,
            "feat_dim": scale.feat_dim,
            "num_classes": scale.num_classes,
            "loss": _loss(spec, scale),
            "head": head,
            "data_preprocessor": {
                "type": "ImgDataPreprocessor",
                "mean": list(scale.mean),
                "std": list(scale.std),
                "bgr_to_rgb": True,
            },
        },
        **suite_hooks(),
        "seesaw": {"preset": scale.name, "task": TASK, "job": "train", "eval_split": "test"},
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": 50},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": {"type": "CheckpointHook", "interval": 1, "max_keep_ckpts": 2},
            "sampler_seed": {"type": "DistSamplerSeedHook"},
        },
        "env_cfg": {"cudnn_benchmark": False, "dist_cfg": {"backend": "nccl"}},
        "log_level": "INFO",
        "load_from": pretrained,
        "resume": False,
        "randomness": {"seed": spec.seed},
    }


def _training(spec: ClassificationSpec, scale: ClassificationScale) -> dict[str, Any]:
    """SGD with a cosine schedule; a decoupled run fine-tunes on class-balanced batches."""
    epochs = scale.finetune_epochs if spec.decoupled else scale.epochs
    sampler = (
        {"type": "ClassBalancedSampler"}
        if spec.decoupled
        else {"type": "DefaultSampler", "shuffle": True}
    )
    return {
        "train_dataloader": _loader(scale, "train", True, sampler),
        "train_cfg": {"type": "EpochBasedTrainLoop", "max_epochs": epochs, "val_interval": epochs},
        "val_cfg": {"type": "ValLoop"},
        "optim_wrapper": {
            "type": "OptimWrapper",
            "optimizer": {"type": "SGD", "lr": scale.lr, "momentum": 0.9, "weight_decay": 5e-4},
        },
        "param_scheduler": [
            {
                "type": "CosineAnnealingLR",
                "T_max": epochs,
                "by_epoch": True,
                "begin": 0,
                "end": epochs,
                "convert_to_iter_based": True,
            }
        ],
        "auto_scale_lr": {"enable": True, "base_batch_size": scale.total_batch},
    }
