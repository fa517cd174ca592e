"""One training step and one prediction of a built detector on the generated data, as the
tests that check a method's plumbing need them."""

import torch
from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate


def train_step(model: torch.nn.Module, cfg: Config) -> tuple[torch.Tensor, dict]:
    """Loss and backward on the first two training images: (total loss, logged losses)."""
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True)
    total, log_vars = model.parse_losses(model.loss(batch["inputs"], batch["data_samples"]))
    total.backward()
    return total, log_vars


def predict_one(model: torch.nn.Module, cfg: Config):  # noqa: ANN201  (an mmdet DetDataSample)
    """The model's prediction, in eval mode, for the first val image, with every score
    above 0 kept (an untrained model's scores may all fall under the configured threshold,
    and a test of the labels must see some)."""
    model.eval()
    model.roi_head.test_cfg.score_thr = 0.0
    val = DATASETS.build(cfg.val_dataloader.dataset)
    batch = model.data_preprocessor(pseudo_collate([val[0]]), False)
    with torch.no_grad():
        return model.predict(batch["inputs"], batch["data_samples"])[0]
