"""Long-tailed image classification (Sec. 4.4, Tables 10-11) as mmengine parts: the dataset of
a split file, a class-balanced sampler, the classifier with the decoupled heads of Kang et
al. (ICLR 2020: cRT, tau-norm, LWS, NCM), the losses Table 10 compares, and the many / medium
/ few shot accuracy. They register in mmdet's registries, so a config of them trains with
mmengine's Runner exactly as the detection configs do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmdet.registry import DATA_SAMPLERS, DATASETS, HOOKS, METRICS, MODELS
from mmengine.dist import get_dist_info
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import Tensor, nn
from torch.utils.data import Dataset

from seesaw_repro.data.imagenet_lt import SHOT_GROUPS, read_split, shot_group
from seesaw_repro.models.losses import seesaw_logits


def class_counts(split_file: str, num_classes: int) -> np.ndarray:
    """Images per class of a split file."""
    _, labels = read_split(Path(split_file))
    return np.bincount(labels, minlength=num_classes)


@DATASETS.register_module()
class ImageListDataset(Dataset):
    """The images of a split file ("relative/path label" lines, paths under `root`).

    Augmentation: "imagenet" trains on random resized crops (scale 0.08-1, aspect 3/4-4/3)
    with horizontal flips, and tests on the centre `crop` of the image resized to `resize` on
    its shorter side, as Kang et al.; "digits" trains on shifts of up to 2 pixels (no flip: a
    mirrored digit is another glyph) and tests on the image as is.
    """

    def __init__(
        self,
        root: str,
        split_file: str,
        augment: str = "imagenet",
        train: bool = True,
        crop: int = 224,
        resize: int = 256,
    ) -> None:
        self.root = Path(root)
        self.paths, self.labels = read_split(Path(split_file))
        self.augment, self.train, self.crop, self.resize = augment, train, crop, resize
        self.metainfo = {"num_classes": int(self.labels.max()) + 1 if len(self.labels) else 0}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = cv2.imread(str(self.root / self.paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {self.root / self.paths[index]}")
        image = self._transform(image)
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "data_samples": int(self.labels[index]),
        }

    def _transform(self, image: np.ndarray) -> np.ndarray:
        if self.augment == "digits":
            if not self.train:
                return image
            padded = cv2.copyMakeBorder(image, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)
            y, x = np.random.randint(0, 5, size=2)
            return padded[y : y + image.shape[0], x : x + image.shape[1]]
        if self.train:
            return _random_resized_crop(image, self.crop)
        h, w = image.shape[:2]
        scale = self.resize / min(h, w)
        image = cv2.resize(image, (round(w * scale), round(h * scale)))
        h, w = image.shape[:2]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        return image[top : top + self.crop, left : left + self.crop]


def _random_resized_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A random crop of 8-100 % of the area and aspect 3/4-4/3, resized to size x size and
    flipped half the time (the ImageNet training augmentation)."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * np.random.uniform(0.08, 1.0)
        aspect = math.exp(np.random.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            break
    else:  # the centre square
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = cv2.resize(image[top : top + ch, left : left + cw], (size, size))
    return crop[:, ::-1] if np.random.rand() < 0.5 else crop


@DATA_SAMPLERS.register_module()
class ClassBalancedSampler(torch.utils.data.Sampler):
    """Kang et al.'s class-balanced sampling: each draw picks a class uniformly, then one of
    its images uniformly; an epoch has as many draws as the dataset has images. Draws are a
    function of (seed, epoch), split across ranks."""

    def __init__(self, dataset: ImageListDataset, seed: int | None = None) -> None:
        self.labels = np.asarray(dataset.labels)
        self.seed = 0 if seed is None else seed
        self.epoch = 0
        self.rank, self.world_size = get_dist_info()
        self.members = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]

    def set_epoch(self, epoch: int) -> None:
        """Draw another epoch's indices (mmengine calls it before each epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = rng.integers(0, len(self.members), size=len(self.labels))
        picks = [self.members[c][rng.integers(0, len(self.members[c]))] for c in classes]
        return iter(int(i) for i in picks[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(range(self.rank, len(self.labels), self.world_size))


@MODELS.register_module()
class DigitsCNN(nn.Module):
    """The tiny preset's backbone: three conv-BN-ReLU-maxpool stages (28 -> 3 pixels)."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


HEADS = ("linear", "lws", "tau_norm", "ncm")


@MODELS.register_module()
class LongTailClassifier(BaseModel):
    """Backbone, global average pooling and a linear classifier, with the heads of Kang et al.:

    - "linear": z = W f + b (end to end, and cRT's re-trained classifier);
    - "lws": z = s * (W f + b), a learnt scale s_j per class (only s trains);
    - "tau_norm": z = (W_j / ||W_j||^tau) f, the bias dropped; tau is chosen on the val split
      (PosthocClassifierHook), 0 keeps W;
    - "ncm": z_j = cos(f, m_j), m_j the mean feature of class j's training images.
    """

    def __init__(
        self,
        backbone: dict,
        feat_dim: int,
        num_classes: int,
        loss: dict,
        head: str = "linear",
        data_preprocessor: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        self.backbone = MODELS.build(backbone)
        self.classifier = nn.Linear(feat_dim, num_classes)
        self.loss_cls = MODELS.build(loss)
        self.head = head
        if head == "lws":
            self.scales = nn.Parameter(torch.ones(num_classes))
        self.register_buffer("tau", torch.zeros(()))
        self.register_buffer("class_means", torch.zeros(num_classes, feat_dim))

    def features(self, inputs: Tensor) -> Tensor:
        """Pooled backbone features [N, feat_dim]."""
        maps = self.backbone(inputs)
        if isinstance(maps, tuple | list):
            maps = maps[-1]
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)

    def logits(self, features: Tensor) -> Tensor:
        """Class scores of pooled features, by the head."""
        if self.head == "ncm":
            return F.normalize(features, dim=1) @ F.normalize(self.class_means, dim=1).T
        if self.head == "tau_norm":
            weight = self.classifier.weight
            return features @ (weight / weight.norm(dim=1, keepdim=True) ** self.tau).T
        z = self.classifier(features)
        return z * self.scales if self.head == "lws" else z

    def forward(
        self, inputs: Tensor, data_samples: list | None = None, mode: str = "tensor"
    ) -> dict | list | Tensor:
        """mmengine's three modes: losses, predictions (class, label) or the scores."""
        z = self.logits(self.features(inputs))
        if mode == "tensor":
            return z
        labels = torch.as_tensor(data_samples, device=z.device)
        if mode == "loss":
            return {"loss_cls": self.loss_cls(z, labels)}
        return list(zip(z.argmax(dim=1).tolist(), labels.tolist(), strict=True))


def _one_hot(labels: Tensor, logits: Tensor) -> Tensor:
    return F.one_hot(labels, logits.shape[1]).to(logits)


@MODELS.register_module()
class LongTailFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017) over the C classes, optionally class-balanced
    (Cui et al. 2019): sum_j w_y FL(z_j, y_j), FL = -(1 - p_t)^gamma log p_t, averaged over
    the batch. beta = 0 gives w = 1 (plain focal loss); else w_c = (1 - beta) / (1 -
    beta^n_c) for a class of n_c training images, scaled to sum to C."""

    def __init__(
        self, gamma: float = 2.0, beta: float = 0.0, split_file: str = "", num_classes: int = 0
    ) -> None:
        super().__init__()
        self.gamma = gamma
        weights = torch.ones(max(num_classes, 1))
        if beta > 0:
            counts = torch.as_tensor(class_counts(split_file, num_classes), dtype=torch.float64)
            effective = (1 - beta) / (1 - beta**counts)
            weights = (effective / effective.sum() * num_classes).float()
        self.register_buffer("weights", weights)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        target = _one_hot(labels, logits)
        p = logits.sigmoid()
        p_t = p * target + (1 - p) * (1 - target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = ((1 - p_t) ** self.gamma * ce).sum(dim=1)
        weight = self.weights[labels] if len(self.weights) == logits.shape[1] else 1.0
        return (weight * loss).mean()


@MODELS.register_module()
class SoftmaxEqualizationLoss(nn.Module):
    """Equalization loss for classification (Tan et al., CVPR 2020, softmax form):
    -log(e^z_y / sum_k w_k e^z_k), w_k = 1 - beta T(n_k) (1 - y_k), where T(n_k) = 1 for a
    tail class (fewer than `tail_images` training images) and beta ~ Bernoulli(gamma) per
    sample and class: a tail class drops out of the other classes' softmax with probability
    gamma, so their samples do not push its logit down."""

    def __init__(
        self, split_file: str, num_classes: int, tail_images: int = 20, gamma: float = 0.9
    ) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts(split_file, num_classes))
        self.register_buffer("tail", counts < tail_images)
        self.gamma = gamma

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        target = _one_hot(labels, logits).bool()
        dropped = (torch.rand_like(logits) < self.gamma) & self.tail[None, :] & ~target
        return F.cross_entropy(logits.masked_fill(dropped, float("-inf")), labels)


@MODELS.register_module()
class SeesawClassificationLoss(nn.Module):
    """Seesaw loss (Eq. 4-8) over C classes, with no background and no objectness branch:
    cross-entropy of z + log S, S the mitigation and compensation factors of the package's
    detection loss (losses.seesaw_logits), counts N accumulated online over all ranks."""

    def __init__(self, num_classes: int, p: float = 0.8, q: float = 1.0, eps: float = 1e-2):
        super().__init__()
        self.p, self.q, self.eps = p, q, eps
        self.register_buffer("cum_samples", torch.zeros(num_classes))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        seen = torch.bincount(labels, minlength=len(self.cum_samples)).to(self.cum_samples)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(seen)
        self.cum_samples += seen
        log_counts = self.cum_samples.clamp(min=1).log().to(logits.dtype)
        log_s = (
            seesaw_logits(logits, labels, log_counts, self.p, self.q, self.eps) - logits.detach()
        )
        return F.cross_entropy(logits + log_s, labels)


@METRICS.register_module()
class ShotGroupAccuracy(BaseMetric):
    """Top-1 accuracy over all classes and over the many / medium / few shot classes (by
    their training images in `train_split_file`), in [0, 1]."""

    default_prefix = "imagenet_lt"

    def __init__(self, train_split_file: str, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.group = shot_group(class_counts(train_split_file, num_classes))

    def process(self, data_batch: dict, data_samples: list) -> None:
        self.results += list(data_samples)

    def compute_metrics(self, results: list) -> dict[str, float]:
        predicted, labels = (np.array(column) for column in zip(*results, strict=True))
        correct = predicted == labels
        found = {"top1": float(correct.mean())}
        for group in SHOT_GROUPS:
            mine = self.group[labels] == group
            found[group] = float(correct[mine].mean()) if mine.any() else float("nan")
        return found


@HOOKS.register_module()
class PosthocClassifierHook(Hook):
    """Before testing, fit what a post-hoc head needs from the loaded model: NCM's class means
    (features of the training images, without augmentation) or tau-norm's tau (the value of
    `taus` with the best val accuracy, as Kang et al. choose it)."""

    def __init__(
        self, train_split_file: str, val_split_file: str, taus: tuple = tuple(np.arange(11) / 10)
    ) -> None:
        self.train_split_file, self.val_split_file = train_split_file, val_split_file
        self.taus = taus

    def before_test(self, runner: Runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        model.eval()
        if model.head == "ncm":
            features, labels = self._features(runner, model, self.train_split_file)
            means = torch.zeros_like(model.class_means)
            means.index_add_(0, labels, F.normalize(features, dim=1))
            model.class_means.copy_(means / torch.bincount(labels, minlength=len(means))[:, None])
        elif model.head == "tau_norm":
            features, labels = self._features(runner, model, self.val_split_file)
            accuracy = {}
            for tau in self.taus:
                model.tau.fill_(float(tau))
                accuracy[float(tau)] = (model.logits(features).argmax(1) == labels).float().mean()
            best = max(accuracy, key=accuracy.get)
            model.tau.fill_(best)
            runner.logger.info(f"tau-norm: tau {best} (val accuracy {float(accuracy[best]):.4f})")

    @staticmethod
    @torch.no_grad()
    def _features(runner: Runner, model: LongTailClassifier, split_file: str) -> tuple:
        loader_cfg = runner.cfg.test_dataloader.copy()
        loader_cfg["dataset"] = {**loader_cfg["dataset"], "split_file": split_file}
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        features, labels = [], []
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            features.append(model.features(data["inputs"]))
            labels.append(torch.as_tensor(data["data_samples"], device=features[-1].device))
        return torch.cat(features), torch.cat(labels)
