"""SegResNet in the published BraTS recipe configuration (MONAI's network, unchanged).

``monai.networks.nets.SegResNet(spatial_dims=3, init_filters=16, blocks_down=(1, 2, 2, 4),
blocks_up=(1, 1, 1), dropout_prob=0.2)``, GroupNorm(8), ReLU, non-trainable (trilinear)
upsampling: 4,702,227 parameters for 4 → 3 channels. Shapes: (B, C_in, X, Y, Z) → logits
(B, C_out, X, Y, Z), X, Y, Z multiples of 8 (three stride-2 downsamplings).

The subclass only adds the size check and runs every tensor channels-last 3D (``channels_last``,
same maths, ``state_dict`` keys MONAI's own). Channels-last trained 1.4-1.8x faster on a 2-core
AVX-512 Xeon (torch 2.13, fp32, 2 threads, aten kernels: 96³ 2.77 vs 3.87 s, 128³ 6.91 vs 12.20 s
per step; ``benchmarks/bench_cpu_conv.py step --variants contiguous plain``) and about the same on the AVX2 EPYC of an
earlier session (5.5 vs 5.7 s at 64³, one thread), so it is the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from monai.networks.nets import SegResNet

from glioseg.errors import InputError
from glioseg.models.blocks import keep_channels_last, prepare_input


@dataclass(frozen=True)
class SegResNetConfig:
    init_filters: int = 16
    dropout: float = 0.2
    channels_last: bool = True
    # nnU-Net's deep supervision: 1x1x1 heads on the decoder at 1/2 (and 1/4) resolution whose
    # logits the loss also scores while training; 0 = MONAI's network exactly
    deep_supervision: int = 0

    def __post_init__(self):
        if self.deep_supervision not in (0, 1, 2):
            raise InputError(f"segresnet: deep_supervision must be 0, 1 or 2 (extra outputs at 1/2 and 1/4 "
                             f"resolution), got {self.deep_supervision}")
        # checked here, not by MONAI's constructor, so that a spec or recipe fails before any training
        if self.init_filters <= 0 or self.init_filters % 8:
            raise InputError(f"segresnet: init_filters must be a positive multiple of 8 (GroupNorm(8) everywhere), "
                             f"got {self.init_filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"segresnet: dropout must be in [0, 1), got {self.dropout}")


class SegResNet3D(SegResNet):
    """MONAI SegResNet (BraTS recipe) with ``size_divisor`` = 8 and an input-size check."""

    size_divisor = 8
    takes_ids = False

    def __init__(self, in_channels: int = 4, out_channels: int = 3, config: SegResNetConfig = SegResNetConfig()):
        super().__init__(spatial_dims=3, init_filters=config.init_filters, in_channels=in_channels,
                         out_channels=out_channels, dropout_prob=config.dropout,
                         blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
        self.channels_last = config.channels_last
        if config.deep_supervision:
            # decoder widths at 1/2 and 1/4 resolution: 2 and 4 times init_filters
            self.ds_heads = nn.ModuleList(nn.Conv3d(config.init_filters * 2 ** (level + 1), out_channels, 1)
                                          for level in range(config.deep_supervision))
        if config.channels_last:
            keep_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """x: (B, in_channels, X, Y, Z) → logits (B, out_channels, X, Y, Z); with deep supervision,
        while training, also the logits at 1/2 (and 1/4) resolution after them (a tuple)."""
        x = prepare_input(x, self.size_divisor, "segresnet", self.channels_last)
        if not (self.training and hasattr(self, "ds_heads")):
            return super().forward(x).contiguous()
        x, down_x = self.encode(x)
        down_x.reverse()
        levels = []                              # decoder outputs, coarsest first (MONAI's decode)
        for i, (up, upl) in enumerate(zip(self.up_samples, self.up_layers)):
            x = upl(up(x) + down_x[i + 1])
            levels.append(x)
        outputs = [self.conv_final(x)] + [head(levels[-2 - k]) for k, head in enumerate(self.ds_heads)]
        return tuple(o.contiguous() for o in outputs)
