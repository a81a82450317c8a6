"""The U-Net baselines of the DALight-3D comparison, as configured MONAI networks.

The comparison reports 3.15M (3D U-Net), 3.17M (Attention U-Net) and 3.20M (Residual 3D U-Net)
parameters without giving the layer widths; these configurations land within ±5 % (4 → 3
channels). All have four resolution levels (three stride-2 downsamplings, like DALight-3D), so
spatial sizes must be multiples of 8.

=================  ===========================================  ================  ==========
name               MONAI network and settings                   parameters        vs paper
=================  ===========================================  ================  ==========
unet3d             UNet, channels (40, 80, 160, 320),           3,035,529         −3.6 %
                   strides (2, 2, 2), num_res_units=0
attention_unet3d   AttentionUnet, channels (24, 48, 96, 192),   3,299,667         +4.1 %
                   strides (2, 2, 2)
residual_unet3d    UNet, channels (26, 52, 104, 208),           3,135,888         −2.0 %
                   strides (2, 2, 2), num_res_units=2
=================  ===========================================  ================  ==========

MONAI's defaults otherwise: 3×3×3 kernels, PReLU, instance norm for UNet; batch norm, ReLU and
additive attention gates for AttentionUnet. ``base_width`` scales the widths (c, 2c, 4c, 8c) — the
tests use small ones; ``channels_last`` is off by default (instance norm returns channels-first
tensors, and the layout measured no faster). Shapes: (B, C_in, X, Y, Z) → logits (B, C_out, X, Y, Z).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import AttentionUnet, UNet

from glioseg.errors import InputError
from glioseg.models.blocks import keep_channels_last, prepare_input

STRIDES = (2, 2, 2)


@dataclass(frozen=True)
class UNetConfig:
    base_width: int = 40
    channels_last: bool = False

    def __post_init__(self):
        if self.base_width <= 0:
            raise InputError(f"{type(self).__name__}: base_width must be positive, got {self.base_width}")

    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_width * 2 ** level for level in range(len(STRIDES) + 1))


@dataclass(frozen=True)
class ResidualUNetConfig(UNetConfig):
    base_width: int = 26
    num_res_units: int = 2


@dataclass(frozen=True)
class AttentionUNetConfig(UNetConfig):
    base_width: int = 24


class UNet3D(UNet):
    """MONAI UNet (plain or residual units); ``size_divisor`` = 8."""

    size_divisor = 2 ** len(STRIDES)
    takes_ids = False

    def __init__(self, in_channels: int = 4, out_channels: int = 3, config: UNetConfig = UNetConfig()):
        super().__init__(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         channels=config.channels(), strides=STRIDES,
                         num_res_units=getattr(config, "num_res_units", 0))
        self.channels_last = config.channels_last
        if config.channels_last:
            keep_channels_last(self)
        self.label = "residual_unet3d" if self.num_res_units else "unet3d"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, X, Y, Z) → logits (B, out_channels, X, Y, Z)."""
        x = prepare_input(x, self.size_divisor, self.label, self.channels_last)
        return super().forward(x).contiguous()


class AttentionUNet3D(AttentionUnet):
    """MONAI AttentionUnet; ``size_divisor`` = 8."""

    size_divisor = 2 ** len(STRIDES)
    takes_ids = False

    def __init__(self, in_channels: int = 4, out_channels: int = 3,
                 config: AttentionUNetConfig = AttentionUNetConfig()):
        super().__init__(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         channels=config.channels(), strides=STRIDES)
        self.channels_last = config.channels_last
        if config.channels_last:
            keep_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, X, Y, Z) → logits (B, out_channels, X, Y, Z)."""
        x = prepare_input(x, self.size_divisor, "attention_unet3d", self.channels_last)
        return super().forward(x).contiguous()
