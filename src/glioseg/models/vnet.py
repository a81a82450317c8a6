"""A compact V-Net: Milletari et al.'s residual encoder-decoder at the comparison's 4.99M size.

MONAI's VNet has fixed widths and 5×5×5 kernels (45.6M parameters), so this is our own, with the
V-Net structure kept: every stage is a residual stack of conv → norm → PReLU units whose input is
added back before the last activation; downsampling is a 2×2×2 stride-2 conv that doubles the
width, upsampling a 2×2×2 stride-2 transposed conv to half the width, concatenated with the skip.
Changes for size and for small batches: 3×3×3 kernels, InstanceNorm instead of BatchNorm, and
four levels instead of five; convs followed by a norm have no bias (the norm would cancel it).

Configuration (base width 20, units (1, 2, 3); 4 → 3 channels: 5,236,421 parameters, +4.9 % vs
the comparison's 4.99M)::

    input      conv 4→20, norm, + input repeated to 20 channels, PReLU   (B,  20, X,   Y,   Z)
    down 1     2×2×2 s2 20→40,  1 unit                                   (B,  40, X/2, ...)
    down 2     2×2×2 s2 40→80,  2 units                                  (B,  80, X/4, ...)
    down 3     2×2×2 s2 80→160, 3 units                                  (B, 160, X/8, ...)
    up 3       ConvT 160→80 ‖ down-2 skip (80) = 160, 3 units            (B, 160, X/4, ...)
    up 2       ConvT 160→40 ‖ down-1 skip (40) = 80,  2 units            (B,  80, X/2, ...)
    up 1       ConvT 80→20  ‖ input skip (20)  = 40,  1 unit             (B,  40, X,   ...)
    output     3×3×3 conv 40→out, norm, PReLU, 1×1×1 conv out→out        (B, out, X, Y, Z)

Spatial sizes must be multiples of 8. Returns logits. ``channels_last`` (off by default: measured
no faster here) runs the activations channels-last 3D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glioseg.errors import InputError
from glioseg.models.blocks import keep_channels_last, prepare_input


@dataclass(frozen=True)
class VNetConfig:
    base_width: int = 20
    units: tuple[int, int, int] = (1, 2, 3)
    channels_last: bool = False

    def __post_init__(self):
        if self.base_width <= 0 or any(u < 1 for u in self.units):
            raise InputError(f"vnet: base_width must be positive and units at least 1 each, got "
                             f"{self.base_width}, {tuple(self.units)}")


def _norm(channels: int) -> nn.GroupNorm:
    """Instance normalisation with affine, written as GroupNorm(C, C): same maths and parameters,
    and unlike InstanceNorm3d it keeps channels-last tensors channels-last."""
    return nn.GroupNorm(channels, channels)


def _unit(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1, bias=False), _norm(channels),
                         nn.PReLU(channels))


class _ResidualStack(nn.Module):
    """n conv units; the input is added before the last PReLU (V-Net's residual stage)."""

    def __init__(self, channels: int, n: int):
        super().__init__()
        self.body = nn.Sequential(*[_unit(channels) for _ in range(n)])
        self.body[-1] = self.body[-1][:2]
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class _Down(nn.Module):
    def __init__(self, c_in: int, n: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(c_in, 2 * c_in, 2, stride=2, bias=False), _norm(2 * c_in),
                                  nn.PReLU(2 * c_in))
        self.stack = _ResidualStack(2 * c_in, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(self.down(x))


class _Up(nn.Module):
    """Transposed conv to c_out/2, concatenated with the c_out/2-channel skip, then n units."""

    def __init__(self, c_in: int, c_out: int, n: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose3d(c_in, c_out // 2, 2, stride=2, bias=False),
                                _norm(c_out // 2), nn.PReLU(c_out // 2))
        self.stack = _ResidualStack(c_out, n)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stack(torch.cat([self.up(x), skip], dim=1))


class VNet3D(nn.Module):
    """Compact V-Net (see the module docstring); ``size_divisor`` = 8."""

    size_divisor = 8
    takes_ids = False

    def __init__(self, in_channels: int = 4, out_channels: int = 3, config: VNetConfig = VNetConfig()):
        super().__init__()
        c = config.base_width
        if c % in_channels != 0:
            raise InputError(f"vnet: base_width {c} must be a multiple of in_channels {in_channels} "
                             "(the input is repeated to the first width for the residual)")
        self.config = config
        self.stem = nn.Sequential(nn.Conv3d(in_channels, c, 3, padding=1, bias=False), _norm(c))
        self.stem_act = nn.PReLU(c)
        n1, n2, n3 = config.units
        self.down1, self.down2, self.down3 = _Down(c, n1), _Down(2 * c, n2), _Down(4 * c, n3)
        self.up3, self.up2, self.up1 = _Up(8 * c, 8 * c, n3), _Up(8 * c, 4 * c, n2), _Up(4 * c, 2 * c, n1)
        self.head = nn.Sequential(nn.Conv3d(2 * c, out_channels, 3, padding=1, bias=False),
                                  _norm(out_channels), nn.PReLU(out_channels),
                                  nn.Conv3d(out_channels, out_channels, 1))
        if config.channels_last:
            keep_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, X, Y, Z) → logits (B, out_channels, X, Y, Z)."""
        x = prepare_input(x, self.size_divisor, "vnet", self.config.channels_last)
        repeat = self.stem[0].out_channels // x.shape[1]
        s0 = self.stem_act(self.stem(x) + x.repeat(1, repeat, 1, 1, 1))
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        d = self.down3(s2)
        d = self.up3(d, s2)
        d = self.up2(d, s1)
        d = self.up1(d, s0)
        return self.head(d).contiguous()
