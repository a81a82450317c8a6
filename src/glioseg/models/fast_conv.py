"""Depthwise and pointwise 3D convolutions with faster CPU paths, same parameters and results.

Measured on the 2-thread AVX2 CPU this project targets (torch 2.13, oneDNN), channels-last 3D:

- depthwise 3×3×3: aten's backward takes ~50× its forward (24 channels at 64³: forward ~10 ms,
  backward ~580 ms). Here the input gradient is the forward kernel run with the flipped filter, and
  the weight gradient a depthwise conv of the padded input with the output gradient as a
  (large) filter: together ~60 ms. On a 2-core Sapphire Rapids (2 threads, channels-last, forward
  + backward) aten's fp32 backward is faster at 64³ (24 channels: 70 vs 94 ms) and slower below
  (48 at 32³: 20 vs 14 ms), and its bf16 backward is 8-12x slower than this one (457 vs 56 ms at
  64³); so which runs is measured per shape and precision (:mod:`kernel_choice`), bf16 under
  autocast included.
- pointwise 1×1×1: aten routes these to ``slow_conv3d`` with layout copies; on a channels-last
  tensor a 1×1×1 conv is exactly a matrix product over the channel axis, run here as ``F.linear``
  on the (B, X, Y, Z, C) view with no copy.

Both modules are ``nn.Conv3d`` subclasses, so the parameters, ``state_dict`` keys and the maths are
those of the plain layer; benchmarks/bench_models.py measures the effect on whole networks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glioseg.models import kernel_choice


class _DepthwiseConv3dFn(torch.autograd.Function):
    """3×3×3 depthwise conv, stride 1, padding 1, no bias, with the two backward passes above."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, padding=1, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        channels = x.shape[1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad, weight.flip(2, 3, 4), padding=1, groups=channels)
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(x, grad)
        return grad_x, grad_w


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """dL/dw[c, i, j, k] = Σ_b,v grad[b, c, v] · x_pad[b, c, v + (i, j, k)], as one grouped conv."""
    b, c = x.shape[:2]
    padded = F.pad(x, (1, 1, 1, 1, 1, 1)).reshape(1, b * c, *[s + 2 for s in x.shape[2:]])
    filters = grad.reshape(b * c, 1, *grad.shape[2:])
    out = F.conv3d(padded, filters, groups=b * c)               # (1, B·C, 3, 3, 3)
    return out.view(b, c, 1, 3, 3, 3).sum(0)


_FAST_DTYPES = (torch.float32, torch.bfloat16)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv of ``x`` computes in: autocast's where it is on, else the input's."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU training in fp32 or bf16 (autocast included), eager: where the custom backward can pay.

    Tracing (TorchScript, ONNX) records the plain conv: the custom Function cannot be exported.
    """
    return (not torch.jit.is_tracing() and not torch.compiler.is_compiling() and x.device.type == "cpu"
            and compute_dtype(x) in _FAST_DTYPES and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad))


def depthwise(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The fast depthwise conv computing in ``dtype`` (autocast's casts done here, explicitly)."""
    with torch.autocast("cpu", enabled=False):
        return _DepthwiseConv3dFn.apply(x.to(dtype), weight.to(dtype))


def _depthwise_candidates(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> dict:
    """Forward + backward of aten's and the fast depthwise conv on random tensors like ``x``."""
    generator = torch.Generator().manual_seed(0)   # the run's random streams stay untouched
    probe = kernel_choice.random_like(x, generator, dtype).requires_grad_()
    filters = kernel_choice.random_like(weight, generator, dtype).requires_grad_()
    grad = kernel_choice.random_like(x, generator, dtype)

    def run(fn):
        def once():
            with torch.autocast("cpu", enabled=False):
                fn(probe, filters).backward(grad)
        return once
    return {kernel_choice.TORCH: run(lambda a, w: F.conv3d(a, w, padding=1, groups=a.shape[1])),
            "glioseg": run(lambda a, w: _DepthwiseConv3dFn.apply(a, w))}


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C, C, 3, padding=1, groups=C, bias=False)`` with a fast CPU backward where it
    measures faster than aten's for the shape and precision (:mod:`kernel_choice`)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and _fast_path(x, self.weight):
            dtype = compute_dtype(x)
            key = kernel_choice.key_of("depthwise3", x, str(dtype).removeprefix("torch."))
            kind = kernel_choice.choose(key, (kernel_choice.TORCH, "glioseg"),
                                        lambda: _depthwise_candidates(x, self.weight, dtype))
            if kind != kernel_choice.TORCH:
                return depthwise(x, self.weight, dtype)
        return F.conv3d(x, self.weight, None, 1, 1, 1, self.groups)


class PointwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C_in, C_out, 1)`` computed as a matrix product on channels-last tensors."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_choice.layout_of(x) == torch.channels_last_3d:
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)
        return F.conv3d(x, self.weight, self.bias)
