"""CARAFE (Wang et al., ICCV 2019) where Table 12 uses it: upsampling in the mask head, and
downsampling in the enhanced FPG neck (CARAFE++, the paper's [48]).

mmcv's CARAFE kernel exists for CUDA only. `reassemble` is its arithmetic in torch (used
off CUDA, so the tiny preset runs on a CPU); `CARAFEUpsample` is mmcv's CARAFEPack with that
fallback, registered in mmdet's scope as "carafe" (the name mmdet's FCNMaskHead asks for), so
mmdet-scoped configs get it and CUDA still runs mmcv's kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.ops import CARAFEPack
from mmdet.models.necks import FPG
from mmdet.registry import MODELS
from torch import Tensor, nn


def reassemble(
    features: Tensor, kernels: Tensor, kernel_size: int, group: int, stride: int = 1, scale: int = 1
) -> Tensor:
    """Content-aware reassembly: output pixel (i, j) is the k x k neighbourhood of input
    pixel (i * stride // scale, j * stride // scale) weighted by kernels[:, g * k^2 + n, i, j]
    for the features of group g (zero outside the map).

    features (N, C, H, W); kernels (N, group * k^2, H * scale / stride, W * scale / stride),
    each kernel normalised by the caller. scale > 1 upsamples (CARAFE), stride > 1
    downsamples (CARAFE++).
    """
    n, channels = features.shape[:2]
    area = kernel_size * kernel_size
    cols = F.unfold(features, kernel_size, padding=kernel_size // 2, stride=stride)
    height, width = (size // scale for size in kernels.shape[-2:])
    cols = cols.view(n, group, channels // group, area, height, width)
    # output pixel (i * scale + a, j * scale + b) weighs the neighbourhood of (i, j): a small
    # matrix product per input pixel, without repeating the neighbourhoods scale^2 times
    kernels = kernels.view(n, group, area, height, scale, width, scale)
    out = torch.einsum("ngckhw,ngkhawb->ngchawb", cols, kernels)
    return out.reshape(n, channels, height * scale, width * scale)


@MODELS.register_module("carafe")
class CARAFEUpsample(CARAFEPack):
    """mmcv's CARAFEPack, its reassembly in torch where mmcv has no kernel."""

    def feature_reassemble(self, x: Tensor, mask: Tensor) -> Tensor:
        """mmcv's CARAFE kernel on CUDA, `reassemble` elsewhere."""
        if x.is_cuda:
            return super().feature_reassemble(x, mask)
        return reassemble(x, mask, self.up_kernel, self.up_group, scale=self.scale_factor)


class CARAFEDownsample(nn.Module):
    """CARAFE++'s downsampler as an FPG transition: kernels predicted from the content
    (1x1 channel compressor, then a stride-2 3x3 encoder, softmax over each k x k kernel)
    reassemble the features at half resolution; a 3x3 conv then maps them to the output
    channels, as the plain transition's conv does. Replaces FPG's stride-2 conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        encoder_kernel: int = 3,
        compressed_channels: int = 64,
        **conv_kwargs,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.compressor = nn.Conv2d(in_channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(
            compressed_channels,
            kernel_size * kernel_size,
            encoder_kernel,
            stride=2,
            padding=encoder_kernel // 2,
        )
        nn.init.normal_(self.encoder.weight, std=0.001)  # near-uniform kernels at first
        nn.init.zeros_(self.encoder.bias)
        self.conv = ConvModule(in_channels, out_channels, 3, padding=1, **conv_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Half-resolution features of x, reassembled by content, then convolved."""
        kernels = F.softmax(self.encoder(self.compressor(x)), dim=1)
        return self.conv(reassemble(x, kernels, self.kernel_size, group=1, stride=2))


@MODELS.register_module()
class EnhancedFPG(FPG):
    """FPG with the transition "carafe_down" (CARAFEDownsample) available to its config."""

    transition_types = {**FPG.transition_types, "carafe_down": CARAFEDownsample}
