"""DALight-3D: a lightweight 3D U-Net with identifier-conditioned norms, CSA and SSFB skips.

Built from the design note dalight3d.md (outside this repository). Reference configuration
(4 → 4): 2,219,074 parameters; the ablations: no SepConv 9,198,682; no IdNorm 2,194,498; no CSA
1,924,522; no SSFB 2,209,588.

Shapes (reference widths, input (B, 4, X, Y, Z) with X, Y, Z multiples of 8)::

    stem  3×3×3 conv 4→24, GN, GELU                               (B,  24, X,   Y,   Z)
    E0    LightweightBlock 24→24, full convs                       (B,  24, X,   Y,   Z)
    down  3×3×3 conv stride 2 (bias), E1 24→48 SepConv             (B,  48, X/2, Y/2, Z/2)
    down, E2 48→96 SepConv + CSA                                   (B,  96, X/4, Y/4, Z/4)
    down, E3 96→432 SepConv + CSA (bottleneck)                     (B, 432, X/8, Y/8, Z/8)
    up    ConvTranspose 432→96, SimpleSkip, LightweightBlock 96    (B,  96, X/4, ...)
    up    ConvTranspose 96→48,  SSFB,       LightweightBlock 48    (B,  48, X/2, ...)
    up    ConvTranspose 48→24,  SSFB,       LightweightBlock 24    (B,  24, X,   ...)
    Dropout3d(0.1), head 3×3×3 conv 24→64 (no bias), GN, GELU, 1×1×1 conv 64→out   (B, out, X, Y, Z)

The network returns logits. ``forward(x, ids=None)``: ``ids`` (B,) are acquisition-group indices
(site / scanner / institution, mapped to 0..num_ids-1 by the caller and recorded with the
checkpoint); ``None`` or an id outside 0..num_ids-1 selects the learned default affine of every IdNorm.

Where the spec leaves a choice open:

- CSA attends between the slices of one axis, ``csa_axis`` (default 2 = Z, the axial direction of
  the RAS cache); slice i receives Σ_j softmax_j(q_i·k_j/√d)·v_j (the spec's "V·A").
- SSFB softmaxes Q over tokens and K over rank, as written. Q's bias (asked for by the spec) gets
  no gradient: a per-rank constant cancels in a softmax over tokens.
- No width-alignment convs and no trilinear resizing in the skips: widths always match, and
  inputs must be multiples of 8, so encoder and decoder sizes always match.
- Every tensor runs channels-last 3D (``channels_last``; same maths), the layout oneDNN is
  fastest on; depthwise and pointwise convs use ``fast_conv``'s CPU paths.

Identifier dropout (the spec's "drop the identifier for a fraction of samples", so the default
affine gets trained) is the sampler's job, not the network's: ``data.sampling`` replaces a sample's
site id by -1 with probability ``id_dropout``, as a pure function of (seed, epoch, index). The
network has no randomness of its own beyond Dropout3d, and its forward is a function of (x, ids).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glioseg.errors import InputError
from glioseg.models.blocks import (SSFB, ConvNormAct, LightweightBlock, SimpleSkip,
                                   conv3, keep_channels_last, prepare_input)
from glioseg.models.fast_conv import PointwiseConv3d


@dataclass(frozen=True)
class DALightConfig:
    """Settings of DALight-3D; the defaults are the paper's reference configuration."""

    base_width: int = 24
    max_width: int = 384
    bottleneck_width: int = 432
    head_width: int = 64
    ssfb_rank: int = 8
    num_ids: int = 8
    dropout: float = 0.1
    separable: bool = True
    id_norm: bool = True
    csa: bool = True
    ssfb: bool = True
    csa_axis: int = 2
    channels_last: bool = True

    def __post_init__(self):
        widths = (*self.widths(), self.head_width)
        if any(w <= 0 or w % 8 for w in widths):
            raise InputError(f"dalight3d: widths {widths} must be positive multiples of 8 (GroupNorm(8) everywhere)")
        if self.csa_axis not in (0, 1, 2):
            raise InputError(f"dalight3d: csa_axis must be 0, 1 or 2 (X, Y, Z), got {self.csa_axis}")
        if self.num_ids < 1 or self.ssfb_rank < 1 or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dalight3d: need num_ids >= 1, ssfb_rank >= 1, 0 <= dropout < 1; got "
                             f"{self.num_ids}, {self.ssfb_rank}, {self.dropout}")

    def widths(self) -> tuple[int, int, int, int]:
        """Stage widths E0..E3: min(C0·2^l, max) for l = 0..2, then the bottleneck width."""
        c = [min(self.base_width * 2 ** level, self.max_width) for level in range(3)]
        return c[0], c[1], c[2], self.bottleneck_width


class DALight3D(nn.Module):
    """DALight-3D (see the module docstring); ``size_divisor`` = 8."""

    size_divisor = 8
    takes_ids = True

    def __init__(self, in_channels: int = 4, out_channels: int = 4, config: DALightConfig = DALightConfig()):
        super().__init__()
        self.config = config
        c0, c1, c2, c3 = config.widths()
        block = dict(id_norm=config.id_norm, num_ids=config.num_ids, csa_axis=config.csa_axis)
        sep = config.separable
        self.stem = ConvNormAct(in_channels, c0)
        self.enc0 = LightweightBlock(c0, c0, separable=False, csa=False, **block)
        self.down1, self.enc1 = conv3(c0, c0, 2, True), LightweightBlock(c0, c1, sep, False, **block)
        self.down2, self.enc2 = conv3(c1, c1, 2, True), LightweightBlock(c1, c2, sep, config.csa, **block)
        self.down3, self.enc3 = conv3(c2, c2, 2, True), LightweightBlock(c2, c3, sep, config.csa, **block)
        self.up3, self.skip3 = nn.ConvTranspose3d(c3, c2, 2, stride=2), SimpleSkip(c2)
        self.dec3 = LightweightBlock(c2, c2, sep, False, **block)
        self.up2, self.skip2 = nn.ConvTranspose3d(c2, c1, 2, stride=2), self._skip(c1)
        self.dec2 = LightweightBlock(c1, c1, sep, False, **block)
        self.up1, self.skip1 = nn.ConvTranspose3d(c1, c0, 2, stride=2), self._skip(c0)
        self.dec1 = LightweightBlock(c0, c0, sep, False, **block)
        self.dropout = nn.Dropout3d(config.dropout)
        self.head = nn.Sequential(
            conv3(c0, config.head_width), nn.GroupNorm(8, config.head_width), nn.GELU(),
            PointwiseConv3d(config.head_width, out_channels))
        if config.channels_last:
            keep_channels_last(self)

    def _skip(self, channels: int) -> nn.Module:
        return SSFB(channels, self.config.ssfb_rank) if self.config.ssfb else SimpleSkip(channels)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in_channels, X, Y, Z), ids: LongTensor (B,) or None → logits (B, out_channels, X, Y, Z)."""
        x = prepare_input(x, self.size_divisor, "dalight3d", self.config.channels_last)
        if ids is not None and ids.shape != x.shape[:1]:
            raise ValueError(f"dalight3d: ids must have shape ({x.shape[0]},), got {tuple(ids.shape)}")
        e0 = self.enc0(self.stem(x), ids)
        e1 = self.enc1(self.down1(e0), ids)
        e2 = self.enc2(self.down2(e1), ids)
        d = self.enc3(self.down3(e2), ids)
        d = self.dec3(self.skip3(e2, self.up3(d)), ids)
        d = self.dec2(self.skip2(e1, self.up2(d)), ids)
        d = self.dec1(self.skip1(e0, self.up1(d)), ids)
        return self.head(self.dropout(d)).contiguous()

