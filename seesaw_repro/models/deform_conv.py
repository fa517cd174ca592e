"""DCNv2 (modulated deformable convolution, Zhu et al. 2019) where Table 12 uses it: in
ResNeSt's stages 2-4 and after FPG's upsampling.

Tiny ResNeSt runs died with SIGSEGV in mmcv 2.1's CPU kernel for it
(`dmcn_im2col_bilinear_cpu`) after 20-60 iterations. Those runs were diverging (their
weights blew up, see presets.TINY_RESNEST_NORM) and the kernel did not crash in isolation,
on NaN, inf or 1e12 offsets either, so the cause is not pinned down; this path has run every
row since, and is 5-8x faster. `modulated_deform_conv2d` is the same arithmetic in torch
(used off CUDA); `DCNv2` is mmcv's ModulatedDeformConv2dPack with that fallback, registered
in mmdet's scope as "DCNv2" (the name mmdet's configs use), so mmdet-scoped configs get it
and CUDA still runs mmcv's kernel.
"""

from __future__ import annotations

import torch
from mmcv.ops import ModulatedDeformConv2dPack
from mmdet.registry import MODELS
from torch import Tensor


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    deform_groups: int,
) -> Tensor:
    """mmcv's modulated_deform_conv2d in torch: kernel tap k of output pixel (i, j) reads the
    input of its deform group bilinearly at (i * stride - pad + tap row * dilation + dy,
    j * stride - pad + tap column * dilation + dx), zero outside the map, times mask.

    offset (N, deform_groups * 2 * K, Ho, Wo) holds (dy, dx) per group and tap, mask
    (N, deform_groups * K, Ho, Wo), K = kh * kw, as mmcv lays them out.
    """
    n, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kernel_h * kernel_w
    arange = lambda size: torch.arange(size, device=x.device, dtype=x.dtype)  # noqa: E731
    tap_y = (arange(kernel_h) * dilation[0]).repeat_interleave(kernel_w)
    tap_x = (arange(kernel_w) * dilation[1]).repeat(kernel_h)
    rows = (arange(out_h) * stride[0] - padding[0])[None, :, None] + tap_y[:, None, None]
    cols = (arange(out_w) * stride[1] - padding[1])[None, None, :] + tap_x[:, None, None]
    offset = offset.view(n, deform_groups, taps, 2, out_h, out_w)
    # pixel coordinates of every tap, (N * G, K * Ho * Wo)
    y = (rows + offset[:, :, :, 0]).reshape(n * deform_groups, -1)
    x_ = (cols + offset[:, :, :, 1]).reshape(n * deform_groups, -1)
    sampled = _bilinear(x.reshape(n * deform_groups, -1, height * width), y, x_, height, width)
    sampled = sampled.view(n, deform_groups, -1, taps, out_h * out_w)
    sampled = sampled * mask.view(n, deform_groups, 1, taps, out_h * out_w)
    columns = sampled.view(n, groups, channels // groups * taps, out_h * out_w)
    out = torch.einsum("gok,ngkl->ngol", weight.view(groups, out_channels // groups, -1), columns)
    out = out.reshape(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _bilinear(features: Tensor, y: Tensor, x: Tensor, height: int, width: int) -> Tensor:
    """features (B, C, H * W) read at points (B, P), as mmcv's kernel reads them:
    zero unless -1 < y < H and -1 < x < W, corners off the map zero, the low corner at floor
    (so at whole-pixel points, where the offsets start, the gradient is the forward
    difference, as mmcv's; grid_sample's rounding picks either side there)."""
    batch, channels = features.shape[:2]
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    # points outside read nothing; moving them just outside keeps floor's integers small and
    # finite (non-finite coordinates would index anywhere)
    y = torch.nan_to_num(y, nan=-2.0).clamp(-2.0, height + 1.0)
    x = torch.nan_to_num(x, nan=-2.0).clamp(-2.0, width + 1.0)
    y_low, x_low = y.floor(), x.floor()
    frac_y, frac_x = y - y_low, x - x_low
    out = features.new_zeros(batch, channels, y.shape[1])
    for dy, weight_y in ((0, 1 - frac_y), (1, frac_y)):
        for dx, weight_x in ((0, 1 - frac_x), (1, frac_x)):
            row, col = y_low + dy, x_low + dx
            valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long()
            weight = (weight_y * weight_x * valid).view(batch, 1, -1)
            index = index.view(batch, 1, -1).expand(-1, channels, -1)
            out = out + features.gather(2, index) * weight
    return out


@MODELS.register_module("DCNv2")
class DCNv2(ModulatedDeformConv2dPack):
    """mmcv's ModulatedDeformConv2dPack, its arithmetic in torch where mmcv's kernel is not
    safe (off CUDA)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """mmcv's kernel on CUDA, `modulated_deform_conv2d` elsewhere; offsets and masks
        predicted by mmcv's conv_offset either way."""
        if x.is_cuda:
            return super().forward(x)
        *offsets, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return modulated_deform_conv2d(
            x,
            torch.cat(offsets, dim=1),  # read as mmcv's kernel reads it: (dy, dx) per tap
            torch.sigmoid(mask),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.deform_groups,
        )
