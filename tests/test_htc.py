"""Table 13's models: HTC-Lite has one mask head and a global context encoder whose target
and loss are checked on a hand case; HTC w/o semantic has three flowing mask heads; the
inference speed hook counts only the images after its warm-up."""

import math

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import ConfigDict

from seesaw_repro import mmdet_plugin  # noqa: F401  (registers HTCLiteRoIHead)
from seesaw_repro.paper import configs, methods
from seesaw_repro.training import hooks

register_all_modules()


def _model(name: str):
    spec = methods.RunSpec(model=name, schedule="1x", mitigation=False, compensation=False)
    return MODELS.build(ConfigDict(configs.resolve(spec, "tiny")["model"]))


def test_htc_lite_has_one_mask_head_and_a_context_encoder_added_to_roi_features():
    model = _model("htc_lite")
    roi_head = model.roi_head
    assert type(roi_head).__name__ == "HTCLiteRoIHead"
    masks = [m for m in roi_head.modules() if type(m).__name__.endswith("MaskHead")]
    assert len(masks) == 1 and roi_head.mask_head is masks[0]
    assert len(roi_head.bbox_head) == 3 and roi_head.with_glbctx
    assert not roi_head.with_semantic and not roi_head.with_feat_relay
    # the context vector is added to every RoI feature of its image
    rois = torch.tensor([[0, 0, 0, 8, 8], [1, 0, 0, 8, 8], [1, 2, 2, 9, 9.0]])
    feats = torch.zeros(3, 64, 7, 7)
    context = torch.arange(2 * 64, dtype=torch.float).reshape(2, 64, 1, 1)
    fused = roi_head._fuse_glbctx(feats, context, rois)
    assert torch.equal(fused[0], context[0].expand(64, 7, 7))
    assert torch.equal(fused[2], context[1].expand(64, 7, 7))


def test_context_encoder_target_is_the_categories_in_the_image_and_its_loss_is_bce():
    head = _model("htc_lite").roi_head.glbctx_head
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    # image 0 holds categories 0 and 2 (twice); image 1 holds category 3
    loss = head.loss(logits, [torch.tensor([0, 2, 2]), torch.tensor([3])])

    def bce(z: float, y: int) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    targets = [1, 0, 1, 0, 0, 0, 0, 1]
    terms = zip(logits.flatten().tolist(), targets, strict=True)
    expected = sum(bce(z, y) for z, y in terms)
    assert loss.item() == pytest.approx(head.loss_weight * expected / 8, rel=1e-6)


def test_htc_without_semantic_has_three_mask_heads_with_information_flow():
    roi_head = _model("htc").roi_head
    assert type(roi_head).__name__ == "HybridTaskCascadeRoIHead"
    assert not roi_head.with_semantic and roi_head.mask_info_flow and roi_head.interleaved
    assert len(roi_head.mask_head) == 3
    assert [head.with_conv_res for head in roi_head.mask_head] == [False, True, True]


def test_inference_speed_counts_only_the_images_after_the_warmup(monkeypatch):
    hook = hooks.InferenceSpeedHook(warmup=2)
    clock = iter(range(100))
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: next(clock) * 0.5)
    hook.before_val_epoch(None)
    for i in range(5):  # each image takes 0.5 s on this clock
        hook.before_val_iter(None, i)
        hook.after_val_iter(None, i, outputs=[object()])
    metrics = {"lvis/segm_AP": 0.1}
    hook.after_val_epoch(None, metrics)
    assert metrics[hooks.SPEED_METRIC] == pytest.approx(3 / 1.5)
