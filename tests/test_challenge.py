"""Table 12's parts: TSD's disentangled proposals and progressive constraint, CARAFE's
reassembly, DCNv2's arithmetic, the test-time merge with masks, the recipe's steps, and the
dual head and multi-scale test trained and evaluated for real on the generated data."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mmcv.cnn import build_conv_layer
from mmcv.ops import modulated_deform_conv2d, roi_align
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from seesaw_repro.compat import load_from_local_safely
from seesaw_repro.data import synth
from seesaw_repro.execution.executors import run_local
from seesaw_repro.execution.runs import RunDir, plan
from seesaw_repro.models.carafe import CARAFEUpsample, reassemble
from seesaw_repro.models.deform_conv import DCNv2
from seesaw_repro.models.deform_conv import modulated_deform_conv2d as deform_conv_in_torch
from seesaw_repro.models.tsd import GAMMA, TSDBBoxHead, deform_roi_align
from seesaw_repro.models.tta import InstanceTTAModel
from seesaw_repro.paper import configs, methods, presets
from seesaw_repro.paper.recipes import Row, Table, load_table

K, S, SCALE = 7, 2, 0.25
ROIS = torch.tensor(
    [[0, 2.3, 3.1, 30.5, 22.0], [1, -5, -3, 10, 12], [1, 40, 30, 95, 85.0]], dtype=torch.float64
)


def _features():
    torch.manual_seed(0)
    return torch.randn(2, 3, 20, 24, dtype=torch.float64)


def test_deformable_pooling_moves_each_bin_by_its_offset_times_the_roi_size():
    features, rois = _features(), ROIS
    offsets = torch.randn(3, 2, K, K, dtype=torch.float64)
    pooled = deform_roi_align(features, rois, offsets, K, SCALE, S)
    assert pooled.shape == (3, 3, K, K)
    # zero offsets: RoIAlign itself (aligned, S x S points per bin)
    zero = deform_roi_align(features, rois, torch.zeros_like(offsets), K, SCALE, S)
    plain = roi_align(features.float(), rois.float(), (K, K), SCALE, S, "avg", True)
    assert torch.allclose(zero.float(), plain, atol=1e-5)
    # bin (i, j) is RoIAlign of that bin's box moved by GAMMA * offset * (w, h)
    size = rois[:, 3:] - rois[:, 1:3]
    for i, j in [(0, 0), (3, 5), (6, 2)]:
        start = rois[:, 1:3] + torch.tensor([j, i]) * size / K + GAMMA * offsets[:, :, i, j] * size
        box = torch.cat([rois[:, :1], start, start + size / K], dim=1)
        expected = roi_align(features.float(), box.float(), (1, 1), SCALE, S, "avg", True)
        assert torch.allclose(pooled[:, :, i, j].float(), expected[:, :, 0, 0], atol=1e-5)
    # non-finite offsets (a diverged run) sample nothing rather than crash torch's grid_sample
    broken = offsets.clone()
    broken[0] = float("nan")
    assert not deform_roi_align(features, rois, broken, K, SCALE, S)[0].any()
    # differentiable in the features and the offsets, as mmcv's CUDA kernel
    features.requires_grad_()
    offsets.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, o: deform_roi_align(f, rois, o, 3, SCALE, S), (features, offsets[:, :, :3, :3])
    )


def translate_rois(rois, delta_r):
    """TSD's regression proposal P_r, as its paper defines it: each RoI (batch index, x1, y1,
    x2, y2) moved by gamma * dR * (width, height)."""
    shift = GAMMA * delta_r * (rois[:, 3:5] - rois[:, 1:3])
    return torch.cat([rois[:, :1], rois[:, 1:3] + shift, rois[:, 3:5] + shift], dim=1)


def _head(**kwargs):
    head = TSDBBoxHead(in_channels=4, fc_out_channels=16, roi_feat_size=7, num_classes=2, **kwargs)
    head.init_weights()
    return head


def test_tsd_regression_proposal_is_the_translated_proposal_and_its_deltas_carry_over():
    head = _head()
    delta_c, delta_r = head.offsets(torch.randn(5, 4, 7, 7))
    assert delta_c.shape == (5, 2, 7, 7) and delta_r.shape == (5, 2)
    assert not delta_c.any() and not delta_r.any()  # TSD starts from the proposal itself
    rois = ROIS.float()
    moved = translate_rois(rois, torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]))
    assert torch.allclose(moved[0], torch.tensor([0, 5.12, -0.68, 33.32, 18.22]), atol=1e-5)
    # deltas learnt against P_r, handed on against P, decode to the same box
    torch.manual_seed(1)
    deltas, shift = torch.randn(3, 4) * 0.3, torch.randn(3, 2)
    in_p_frame = head.to_proposal_frame(deltas, shift)
    coder = head.bbox_coder
    assert torch.allclose(
        coder.decode(rois[:, 1:], in_p_frame),
        coder.decode(translate_rois(rois, shift)[:, 1:], deltas),
        atol=1e-4,
    )


def test_progressive_constraint_on_a_hand_case():
    head = _head(reg_class_agnostic=True)
    # two RoIs: class 0 (positive) and background (label 2); logits of 3 outputs
    labels = torch.tensor([0, 2])
    sibling = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    tsd = torch.log(torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.3, 0.6]]))
    rois = torch.tensor([[0, 0, 0, 10, 10.0], [0, 5, 5, 20, 20.0]])
    tsd_deltas = torch.tensor([[0.5, 0, 0, 0], [0, 0, 0, 0.0]])  # 0.5 * std 0.1 * 10 = 0.5 px
    results = {
        "bbox_targets": (labels, None, torch.zeros(2, 4), None),
        "rois": rois,
        "sibling_cls_score": sibling,
        "cls_score": tsd,
        "sibling_bbox_pred": torch.zeros(2, 4),
        "bbox_pred": tsd_deltas,
    }
    losses = head.progressive_constraint(results)
    # class: margins min(0.2, 1 - p_sibling) = 0.2, 0.2; hinge (p_sib + m - p_tsd)_+
    expected_cls = (max(0.5 + 0.2 - 0.6, 0) + max(0.8 + 0.2 - 0.6, 0)) / 2
    assert losses["loss_pc_cls"].item() == pytest.approx(expected_cls)
    # box (positives): sibling IoU 1 (margin 0); TSD's box moved 0.5 px: IoU 95 / 105
    assert losses["loss_pc_loc"].item() == pytest.approx(1 - 95 / 105, abs=1e-6)
    without = _head(pc_cls=False).progressive_constraint(  # class-specific deltas too
        {**results, "bbox_pred": tsd_deltas.repeat(1, 2), "sibling_bbox_pred": torch.zeros(2, 8)}
    )
    assert set(without) == {"loss_pc_loc"}
    assert without["loss_pc_loc"].item() == pytest.approx(1 - 95 / 105, abs=1e-6)


def test_dual_head_averages_the_two_branches_scores_not_their_logits():
    # Appendix D.2: "the scores ... are averaged". With the objectness branch a score is
    # class softmax x foreground probability, so averaging logits would give another score.
    seesaw = {"type": "ReproSeesawLoss", "num_classes": 2, "objectness": True}
    head = _head(dual_cls=True, loss_cls=seesaw).eval()
    # each branch answers the same logits (classes 0, 1 | foreground, background) for any RoI
    hand = {"tsd_cls": [0.0, 0.0, np.log(9), 0.0], "dual_cls": [np.log(3), 0.0, 0.0, 0.0]}
    for name, logits in hand.items():
        out = getattr(head, name)["out"]
        torch.nn.init.zeros_(out.weight)
        out.bias.data = torch.tensor(logits, dtype=torch.float)
    # scores: original (0.45, 0.45 | bg 0.1), dual (0.375, 0.125 | bg 0.5)
    cls_score, _ = head.tsd_forward(torch.randn(2, 4, 7, 7), torch.randn(2, 4, 7, 7))
    scores = head.loss_cls.get_activation(cls_score)
    assert torch.allclose(scores, torch.tensor([[0.4125, 0.2875, 0.3]] * 2), atol=1e-6)
    # what averaging the logits would have given: (0.4755, 0.2745 | 0.25)
    mean_logits = head.loss_cls.get_activation(torch.tensor([np.log(3) / 2, 0, np.log(3), 0]))
    assert not torch.allclose(mean_logits.float(), scores[0], atol=1e-2)
    head.train()  # training: the dual branch's own logits, which its fine-tune learns
    cls_score, _ = head.tsd_forward(torch.randn(2, 4, 7, 7), torch.randn(2, 4, 7, 7))
    assert torch.allclose(cls_score, torch.tensor([hand["dual_cls"]] * 2, dtype=torch.float))


def _reassemble_by_definition(features, kernels, k, group, stride, scale):
    n, c, h, w = features.shape
    out = torch.zeros(n, c, *kernels.shape[-2:], dtype=features.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            for ch in range(c):
                g = ch // (c // group)
                for dy in range(k):
                    for dx in range(k):
                        y = i * stride // scale + dy - k // 2
                        x = j * stride // scale + dx - k // 2
                        if 0 <= y < h and 0 <= x < w:
                            weight = kernels[:, g * k * k + dy * k + dx, i, j]
                            out[:, ch, i, j] += features[:, ch, y, x] * weight
    return out


def test_carafe_reassembly_upsampling_and_downsampling():
    features = _features()[:, :, :5, :7].repeat(1, 2, 1, 1)  # 6 channels, 2 groups of 3
    up = torch.randn(2, 2 * 9, 10, 14, dtype=torch.float64)
    assert torch.allclose(
        reassemble(features, up, 3, 2, scale=2),
        _reassemble_by_definition(features, up, 3, 2, 1, 2),
    )
    down = torch.randn(2, 25, 3, 4, dtype=torch.float64)
    assert torch.allclose(
        reassemble(features, down, 5, 1, stride=2),
        _reassemble_by_definition(features, down, 5, 1, 2, 1),
    )
    # mmdet's mask head asks for "carafe": in mmdet's scope (every config's default scope) it
    # gets the version that also runs on a CPU
    with DefaultScope.overwrite_default_scope("mmdet"):
        head = MODELS.build(
            {
                "type": "FCNMaskHead",
                "num_convs": 1,
                "in_channels": 8,
                "conv_out_channels": 8,
                "num_classes": 3,
                "upsample_cfg": {"type": "carafe", "scale_factor": 2, "compressed_channels": 16},
            }
        )
    assert isinstance(head.upsample, CARAFEUpsample)
    assert head(torch.randn(2, 8, 14, 14)).shape == (2, 3, 28, 28)


@pytest.mark.parametrize(
    ("groups", "deform_groups", "stride", "padding", "dilation"),
    [(1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1, 2, 2, 1, 1), (2, 2, 1, 2, 2)],
)
def test_dcn_v2_in_torch_equals_mmcvs_kernel_values_and_gradients(
    groups, deform_groups, stride, padding, dilation
):
    # mmcv's CPU kernel is fine on these (it crashed only in diverging training runs)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7)
    weight = torch.randn(6, 8 // groups, 3, 3)
    bias = torch.randn(6)
    out_h = (9 + 2 * padding - 2 * dilation - 1) // stride + 1
    out_w = (7 + 2 * padding - 2 * dilation - 1) // stride + 1
    # offsets of 3 pixels put many taps off the map; at zero (where training starts) every
    # tap is on a whole pixel, where the gradient must take mmcv's side (forward difference)
    for offset_scale in (3.0, 0.0):
        offset = torch.randn(2, deform_groups * 18, out_h, out_w) * offset_scale
        mask = torch.rand(2, deform_groups * 9, out_h, out_w)
        args = (x, offset, mask, weight, bias)
        for tensor in args:
            tensor.requires_grad_(True)
        geometry = ((stride,) * 2, (padding,) * 2, (dilation,) * 2, groups, deform_groups)
        ours = deform_conv_in_torch(*args, *geometry)
        theirs = modulated_deform_conv2d(*args, *geometry)
        assert torch.allclose(ours, theirs, atol=1e-4)
        upstream = torch.randn_like(ours)
        for tensor, ours_grad, theirs_grad in zip(
            args,
            torch.autograd.grad(ours, args, upstream),
            torch.autograd.grad(theirs, args, upstream),
            strict=True,
        ):
            assert torch.allclose(ours_grad, theirs_grad, atol=1e-3), (offset_scale, tensor.shape)


def test_dcn_v2_in_torch_is_a_convolution_at_zero_offset_and_never_reads_non_finite_points():
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64)
    weight = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 6, 5, dtype=torch.float64)
    mask = torch.ones(1, 9, 6, 5, dtype=torch.float64)
    geometry = ((1, 1), (1, 1), (1, 1), 1, 1)
    out = deform_conv_in_torch(x, offset, mask, weight, None, *geometry)
    assert torch.allclose(out, torch.nn.functional.conv2d(x, weight, padding=1))
    # a tap moved by NaN, inf or a huge offset reads zero, as one moved off the map does
    far = offset.clone()
    far[0, 8:10, 2, 2] = 100.0  # tap 4 (the centre) of output pixel (2, 2)
    expected = deform_conv_in_torch(x, far, mask, weight, None, *geometry)
    for value in (float("nan"), float("inf"), -float("inf"), 1e30):
        moved = offset.clone()
        moved[0, 8:10, 2, 2] = value
        assert torch.equal(deform_conv_in_torch(x, moved, mask, weight, None, *geometry), expected)
    # mmdet's configs ask for "DCNv2": in mmdet's scope they get the version that runs on a CPU
    with DefaultScope.overwrite_default_scope("mmdet"):
        conv = build_conv_layer({"type": "DCNv2", "deform_groups": 1}, 4, 6, 3, padding=1)
    assert isinstance(conv, DCNv2)
    with torch.no_grad():
        conv.conv_offset.weight.normal_(std=0.3)  # offsets and masks from the input
    features = torch.randn(2, 4, 8, 8)
    assert torch.allclose(conv(features), super(DCNv2, conv).forward(features), atol=1e-4)


def _view(boxes, scores, masks, flip):
    sample = DetDataSample(
        metainfo={"ori_shape": (40, 100), "flip": flip, "flip_direction": "horizontal"}
    )
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float),
        scores=torch.tensor(scores),
        labels=torch.tensor([1] * len(scores)),
        masks=masks,
    )
    return sample


class _Detector(torch.nn.Module):
    def test_step(self, data):  # what the TTA wrapper asks of a detector; not called here
        raise NotImplementedError


def test_test_time_merge_flips_views_back_and_keeps_each_detections_mask():
    masks = torch.zeros(2, 40, 100, dtype=torch.bool)
    masks[0, 10:20, 10:20] = True  # the object
    masks[1, 30:35, 50:60] = True  # another
    flipped = torch.zeros(1, 40, 100, dtype=torch.bool)
    flipped[0, 10:20, 80:90] = True  # the object in the mirrored view, more confident
    tta = InstanceTTAModel(
        module=_Detector(),
        tta_cfg=ConfigDict(nms={"type": "nms", "iou_threshold": 0.5}, max_per_img=10),
    )
    merged = tta._merge_single_sample(
        [
            _view([[10, 10, 20, 20], [50, 30, 60, 35]], [0.7, 0.6], masks, False),
            _view([[80, 10, 90, 20]], [0.9], flipped, True),
        ]
    ).pred_instances
    assert merged.scores.tolist() == pytest.approx([0.9, 0.6])
    assert merged.bboxes[0].tolist() == [10, 10, 20, 20]  # the mirrored view, back in place
    assert torch.equal(merged.masks[0], masks[0]) and torch.equal(merged.masks[1], masks[1])


def test_table12_adds_one_step_per_row_and_chains_its_last_runs():
    table = load_table("table12")
    specs = [row.spec for row in table.rows]
    changed = [
        {f for f in methods.RunSpec.field_names() if getattr(a, f) != getattr(b, f)}
        for a, b in zip(specs, specs[1:], strict=False)
    ]
    assert changed == [
        {"norm"},
        {"mask_upsample"},
        {"model"},
        {"box_head"},
        {"mask_scoring"},
        {"augment", "schedule"},
        {"neck"},
        {"backbone"},
        {"mitigation", "compensation", "objectness", "nla"},
        {"dual_head"},
        {"test_aug"},
    ]
    runs = {run.rows[0].split(":")[1]: run for run in plan(table, "tiny")}
    assert len(runs) == 12
    dual, tta, seesaw = runs["dual_head"], runs["test_aug"], runs["seesaw"]
    assert dual.needs == (seesaw.run_id,) and tta.needs == (dual.run_id,)
    assert dual.config["load_from"].endswith(f"{seesaw.run_id}/iter_1500.pth")  # 45 epochs
    assert dual.config["train_cfg"]["max_iters"] == 400  # the dual head: 1x ...
    assert dual.config["train_dataloader"]["dataset"]["type"] == "ClassBalancedDataset"  # RFS
    heads = {key: runs[key].config["model"]["roi_head"]["bbox_head"] for key in ("tsd", "seesaw")}
    assert heads["tsd"][0]["pc_cls"] and not heads["seesaw"][0]["pc_cls"]  # Appendix D.2
    assert tta.config["model"]["type"] == "InstanceTTAModel"
    assert tta.config["seesaw"]["job"] == "evaluate"
    milestones = runs["augmentation"].config["param_scheduler"][1]["milestones"]
    assert milestones == [1000, 1333]  # epochs 30 and 40 of 45
    with pytest.raises(methods.SpecError, match="htc_lite"):
        methods.RunSpec(box_head="tsd")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_from_local_safely(str(path), map_location="cpu")["state_dict"]


@pytest.fixture
def with_plumbing_preset(monkeypatch, quick_preset):
    """The quick preset evaluated on 6 val images (77 instances, every frequency group): the
    evaluation of 30 images was a third of the dual-head chain's time, and this test asks
    what runs, not what it learns."""
    synth_spec = replace(quick_preset.synth, num_val_images=6)
    preset = replace(quick_preset, name="plumbing", synth=synth_spec)
    monkeypatch.setitem(presets.PRESETS, preset.name, preset)
    return preset


@pytest.fixture
def plumbing_data(tmp_path, with_plumbing_preset):
    synth.generate(tmp_path / "data", with_plumbing_preset.synth)
    return tmp_path / "data"


@pytest.mark.slow
def test_dual_head_trains_only_its_classifiers_and_the_flip_test_evaluates_them(
    tmp_path, plumbing_data, with_plumbing_preset
):
    last = load_table("table12").rows[-1].spec
    light = replace(last, neck="fpn", backbone="r50")  # the chain, on a lighter model
    runs = plan(Table("t", "t", "", [], [Row("tta", light)]), with_plumbing_preset.name)
    assert [len(run.needs) for run in runs] == [0, 1, 1]
    states = run_local(runs, tmp_path, plumbing_data, jobs=1)
    assert set(states.values()) == {"done"}, states
    first, dual, tta = (RunDir(tmp_path, run.run_id).path for run in runs)
    before = _state(next(first.glob("iter_*.pth")))
    after = _state(next(dual.glob("iter_*.pth")))
    changed = {
        key.split(".", 3)[3].split(".")[0]
        for key in after
        if key not in before or not torch.equal(before[key], after[key])
    }
    assert changed == {"dual_cls", "loss_cls"}  # new classifiers and their Seesaw counts
    assert json.loads((tta / "metrics.json").read_text())["split"] == "val"
    log = (tta / "train.log").read_text()
    assert "missing keys" not in log
    views = configs.materialise(runs[2].config, plumbing_data, tta).test_dataloader.dataset
    assert len(views.pipeline[1].transforms[0]) == 5  # five scales, no flips (digits)


@pytest.mark.gpu
def test_the_cpu_arithmetic_equals_mmcvs_cuda_kernels():
    features = _features().float()
    offsets = torch.randn(3, 2, K, K)
    on_cpu = deform_roi_align(features, ROIS.float(), offsets, K, SCALE, S)
    on_gpu = deform_roi_align(features.cuda(), ROIS.float().cuda(), offsets.cuda(), K, SCALE, S)
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-4)
    upsample = CARAFEUpsample(channels=6, scale_factor=2, compressed_channels=8)
    x = torch.randn(2, 6, 5, 7)
    assert torch.allclose(upsample(x), upsample.cuda()(x.cuda()).cpu(), atol=1e-4)
    conv = DCNv2(6, 4, 3, padding=1, groups=2)
    with torch.no_grad():
        conv.conv_offset.weight.normal_(std=0.3)
    assert torch.allclose(conv(x), conv.cuda()(x.cuda()).cpu(), atol=1e-4)


def test_instaboost_runs_on_instances_of_several_parts():
    from instaboostfast import pycococreater
    from mmdet.datasets.transforms import InstaBoost

    from seesaw_repro import compat

    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 3:9] = mask[10:18, 12:25] = 1  # two parts: two contours
    with pytest.raises(ValueError):  # instaboostfast 0.1.2 on numpy >= 1.24
        pycococreater.binary_mask_to_polygon(mask)
    assert len(compat._mask_to_polygons(mask)) == 2
    one = mask.copy()
    one[2:6] = 0
    assert compat._mask_to_polygons(one) == pycococreater.binary_mask_to_polygon(one)
    # mmdet's transform, always augmenting, on an image whose instance has two parts
    compat.apply()
    np.random.seed(0)
    instance = {
        "bbox": [3.0, 2.0, 25.0, 18.0],
        "bbox_label": 1,
        "mask": [[3, 2, 9, 2, 9, 6, 3, 6], [12, 10, 25, 10, 25, 18, 12, 18]],
        "ignore_flag": 0,
    }
    image = np.random.randint(0, 255, (20, 30, 3), dtype=np.uint8)
    for _ in range(5):
        out = InstaBoost(aug_ratio=1.0)({"img": image.copy(), "instances": [dict(instance)]})
        assert out["img"].shape == image.shape and len(out["instances"]) == 1
