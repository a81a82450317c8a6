"""Layers shared by the networks of the zoo (DALight-3D's building blocks live here).

Shapes: every layer takes and returns 5-D tensors ``(B, C, X, Y, Z)`` unless stated; ``ids`` is a
``LongTensor (B,)`` of acquisition-group identifiers or ``None``.

The forms follow the design note dalight3d.md (outside this repository); where its wording leaves
a choice open the choice is written at the layer. All layers keep whatever memory format they are given (a network may run
in ``torch.channels_last_3d``), and all attention is in forms that never build a voxel-by-voxel
matrix: CSA attends over the D slices (O(D²)), SSFB over a rank-8 bottleneck (O(N·rank·C)).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from glioseg.errors import InputError
from glioseg.models.fast_conv import DepthwiseConv3d, PointwiseConv3d
from glioseg.models.fast_norm import group_norm

GROUPS = 8


def fp32_region(x: torch.Tensor):
    """A context where autocast is off for ``x``'s device (attention maths stays fp32)."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def conv3(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv3d:
    """Full 3×3×3 convolution with 'same' padding."""
    return nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def check_divisible(x: torch.Tensor, divisor: int, model: str) -> None:
    """An InputError unless ``x`` is (B, C, X, Y, Z) with every spatial size a multiple of ``divisor``."""
    if x.dim() != 5:
        raise InputError(f"{model}: input must be 5-D (B, C, X, Y, Z), got shape {tuple(x.shape)}")
    for size in x.shape[2:]:
        if size % divisor != 0 or size == 0:
            raise InputError(
                f"{model}: spatial size {tuple(x.shape[2:])} is not divisible by {divisor}; "
                f"use patch sizes that are multiples of {divisor} (e.g. pad the volume)")


def prepare_input(x: torch.Tensor, divisor: int, model: str, channels_last: bool) -> torch.Tensor:
    """Check the input size, then convert to channels-last 3D when the network runs that way."""
    check_divisible(x, divisor, model)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def keep_channels_last(model: nn.Module) -> nn.Module:
    """Make every 3D conv of ``model`` return channels-last 3D tensors.

    For batch 1, aten sends a conv whose N·C·D·H is at most 20,480 (4 MRI channels at 64³, or
    96 channels at 8³) to its native kernel, which returns channels-first; everything after it
    would then run channels-first. A forward hook converts such outputs back (a no-op otherwise),
    so the whole network stays in the layout that oneDNN trains fastest on this CPU.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            module.register_forward_hook(_channels_last_hook)
    return model


def _channels_last_hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous(memory_format=torch.channels_last_3d)


class SepConv(nn.Module):
    """Depthwise 3×3×3 conv then a pointwise 1×1×1 conv; no biases.

    The spec lets the depthwise conv carry a stride; DALight-3D only uses stride 1 (its downsampling
    is a full strided conv), which is what the fast CPU kernels in ``fast_conv`` implement.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = DepthwiseConv3d(c_in)
        self.pointwise = PointwiseConv3d(c_in, c_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class IdNorm(nn.Module):
    """GroupNorm without affine, then a per-sample affine chosen by the identifier.

    ``gamma``/``beta`` are embedding tables (num_ids, C) initialised to ones/zeros. A sample whose id
    is ``None``, negative or ``>= num_ids`` uses the separately learned default affine, so a batch can
    mix known and unknown groups.
    """

    def __init__(self, channels: int, num_ids: int = 8, groups: int = GROUPS, eps: float = 1e-5):
        super().__init__()
        self.num_ids, self.groups, self.eps = num_ids, groups, eps
        self.gamma = nn.Embedding(num_ids, channels)
        self.beta = nn.Embedding(num_ids, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)
        self.default_gamma = nn.Parameter(torch.ones(channels))
        self.default_beta = nn.Parameter(torch.zeros(channels))

    def affine(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (B, C) gamma and beta for ``ids`` (B,), the default where the id is unknown."""
        known = ((ids >= 0) & (ids < self.num_ids)).unsqueeze(1)
        index = ids.clamp(0, self.num_ids - 1)
        gamma = torch.where(known, self.gamma(index), self.default_gamma)
        beta = torch.where(known, self.beta(index), self.default_beta)
        return gamma, beta

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        if ids is None:
            return group_norm(x, self.groups, self.default_gamma, self.default_beta, self.eps)
        gamma, beta = self.affine(ids)
        if x.shape[0] == 1:
            # One sample: the fused group_norm affine is one pass over the tensor instead of two.
            return group_norm(x, self.groups, gamma[0], beta[0], self.eps)
        shape = (x.shape[0], x.shape[1], 1, 1, 1)
        y = group_norm(x, self.groups, None, None, self.eps)
        return torch.addcmul(beta.view(shape), y, gamma.view(shape))


class PlainNorm(nn.GroupNorm):
    """Affine GroupNorm with IdNorm's call signature (the 'no IdNorm' ablation); ``ids`` is ignored."""

    def __init__(self, channels: int, groups: int = GROUPS):
        super().__init__(groups, channels)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class SqueezeExcite(nn.Module):
    """Channel attention: GAP → Linear(C, C/4) → GELU → Linear(C/4, C) → sigmoid → scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 4)
        self.fc2 = nn.Linear(channels // 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.gelu(self.fc1(x.mean(dim=(2, 3, 4))))))
        return x * s.view(s.shape[0], s.shape[1], 1, 1, 1)


class CrossSliceAttention(nn.Module):
    """Attention between the slices of one spatial axis, added back to every voxel of the slice.

    Slice descriptors are the mean over the other two axes, (B, C, D); Q and K are 1×1 Conv1d
    projections to d = max(C/4, 8), V to C (with bias). Slice i receives Σ_j A_ij v_j with
    A = softmax_j(q_i·k_j / √d) (the spec's "V·A" read as ordinary attention), computed in fp32.
    ``axis`` is the spatial axis the slices are stacked along: 2 = Z, the axial direction of the
    RAS-oriented cache.
    """

    def __init__(self, channels: int, axis: int = 2):
        super().__init__()
        if axis not in (0, 1, 2):
            raise InputError(f"CSA axis must be a spatial axis 0, 1 or 2 (X, Y, Z), got {axis}")
        self.dim = 2 + axis
        self.pool_dims = tuple(d for d in (2, 3, 4) if d != self.dim)
        inner = max(channels // 4, 8)
        self.scale = 1.0 / math.sqrt(inner)
        self.query = nn.Conv1d(channels, inner, 1)
        self.key = nn.Conv1d(channels, inner, 1)
        self.value = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32_region(x):
            s = x.mean(dim=self.pool_dims).float()                  # (B, C, D)
            q = F.conv1d(s, self.query.weight.float(), self.query.bias.float())
            k = F.conv1d(s, self.key.weight.float(), self.key.bias.float())
            v = F.conv1d(s, self.value.weight.float(), self.value.bias.float())
            attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * self.scale, dim=-1)  # (B, D, D)
            out = torch.bmm(v, attn.transpose(1, 2)).to(x.dtype)   # (B, C, D)
        shape = [out.shape[0], out.shape[1], 1, 1, 1]
        shape[self.dim] = out.shape[2]
        return x + out.view(shape)


class LightweightBlock(nn.Module):
    """conv → norm → GELU → conv → norm → SE (→ CSA), then GELU(z + proj(x)); stride 1.

    Convs are SepConv when ``separable`` else full 3×3×3 (no bias); norms are IdNorm when
    ``id_norm`` else affine GroupNorm; ``proj`` is identity when widths match, else 1×1×1 conv + GN.
    """

    def __init__(self, c_in: int, c_out: int, separable: bool, csa: bool, id_norm: bool,
                 num_ids: int = 8, csa_axis: int = 2):
        super().__init__()
        conv = SepConv if separable else conv3
        norm = (lambda c: IdNorm(c, num_ids)) if id_norm else PlainNorm
        self.conv1, self.norm1 = conv(c_in, c_out), norm(c_out)
        self.conv2, self.norm2 = conv(c_out, c_out), norm(c_out)
        self.se = SqueezeExcite(c_out)
        self.csa = CrossSliceAttention(c_out, csa_axis) if csa else nn.Identity()
        self.proj = nn.Identity() if c_in == c_out else nn.Sequential(
            PointwiseConv3d(c_in, c_out, bias=False), nn.GroupNorm(GROUPS, c_out))

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        z = F.gelu(self.norm1(self.conv1(x), ids))
        z = self.csa(self.se(self.norm2(self.conv2(z), ids)))
        return F.gelu(z + self.proj(x))


class ConvNormAct(nn.Sequential):
    """3×3×3 conv (no bias) → GroupNorm → GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3(c_in, c_out), nn.GroupNorm(GROUPS, c_out), nn.GELU())


class SimpleSkip(nn.Module):
    """concat(encoder, decoder) → 3×3×3 conv → GroupNorm → GELU, back to C channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse = ConvNormAct(2 * channels, channels)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([enc, dec], dim=1))


class SSFB(nn.Module):
    """Skip and spatial feature blend of encoder ``e`` and decoder ``d`` features, both C channels.

    Low-rank attention (Q from d, K and V from e, 1×1×1 convs with bias; Q softmaxed over tokens and
    K over rank, as the spec says; context = K·Vᵀ is rank×C, so the cost is O(N·rank·C)), a channel
    gate on e from GAP(d) ‖ GAP(e), blended by σ(α), then fused with d by a 3×3×3 conv → GN → GELU.
    The spec's width-alignment convs are not built: in DALight-3D both inputs always have C channels.
    The attention runs on (B, N, C) token views, which are free on channels-last tensors.
    """

    def __init__(self, channels: int, rank: int = 8):
        super().__init__()
        hidden = max(channels // 4, 8)
        self.query = PointwiseConv3d(channels, rank)
        self.key = PointwiseConv3d(channels, rank)
        self.value = PointwiseConv3d(channels, channels)
        self.out = PointwiseConv3d(channels, channels)
        self.gate = nn.Sequential(nn.Linear(2 * channels, hidden), nn.GELU(),
                                  nn.Linear(hidden, channels), nn.Sigmoid())
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.fuse = ConvNormAct(2 * channels, channels)

    def attention(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        """Efficient-form low-rank attention; returns (B, C, X, Y, Z) in the tokens' layout."""
        rank = self.query.out_channels
        te, td = _tokens(enc), _tokens(dec)                           # (B, N, C)
        q = F.linear(td, _matrix(self.query), self.query.bias)
        kv = F.linear(te, torch.cat([_matrix(self.key), _matrix(self.value)]),
                      torch.cat([self.key.bias, self.value.bias]))
        with fp32_region(enc):
            q = q.float().softmax(dim=1)                              # over tokens
            k, v = kv[..., :rank].float().softmax(dim=2), kv[..., rank:].float()  # K over rank
            context = torch.bmm(k.transpose(1, 2), v)                 # (B, r, C)
            att = torch.bmm(q, context).to(enc.dtype)                 # (B, N, C)
        att = F.linear(att, _matrix(self.out), self.out.bias)
        b, x, y, z = enc.shape[0], *enc.shape[2:]
        return att.view(b, x, y, z, -1).permute(0, 4, 1, 2, 3)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        squeeze = torch.cat([dec.mean(dim=(2, 3, 4)), enc.mean(dim=(2, 3, 4))], dim=1)
        gate = self.gate(squeeze).view(enc.shape[0], enc.shape[1], 1, 1, 1)
        w = torch.sigmoid(self.alpha)
        # σ(α)·attn + (1 − σ(α))·(e·gate) in one pass over the volume
        blend = torch.addcmul(w * self.attention(enc, dec), enc, (1 - w) * gate)
        return self.fuse(torch.cat([dec, blend], dim=1))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) → (B, N, C); a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, x.shape[1])


def _matrix(conv: nn.Conv3d) -> torch.Tensor:
    return conv.weight.view(conv.out_channels, conv.in_channels)
