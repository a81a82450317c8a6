"""Depthwise and pointwise 3D convolutions with faster CPU paths, same parameters and results.

Measured on the 2-thread AVX2 CPU this project targets (torch 2.13, oneDNN), channels-last 3D:

- depthwise 3×3×3: aten's backward takes ~50× its forward (24 channels at 64³: forward ~10 ms,
  backward ~580 ms). Here the input gradient is the forward kernel run with the flipped filter, and
  the weight gradient a depthwise conv of the padded input with the output gradient as a
  (large) filter: together ~60 ms.
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


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Use the custom backward only for fp32 CPU training without autocast (elsewhere aten is fine).

    Tracing (TorchScript, ONNX) records the plain conv: the custom Function cannot be exported.
    """
    return (not torch.jit.is_tracing() and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad) and not torch.is_autocast_enabled("cpu"))


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C, C, 3, padding=1, groups=C, bias=False)`` with a fast CPU backward."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and _fast_path(x, self.weight):
            return _DepthwiseConv3dFn.apply(x, self.weight)
        return F.conv3d(x, self.weight, None, 1, 1, 1, self.groups)


class PointwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C_in, C_out, 1)`` computed as a matrix product on channels-last tensors."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)
        return F.conv3d(x, self.weight, self.bias)
