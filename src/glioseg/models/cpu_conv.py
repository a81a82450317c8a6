"""oneDNN kernels for the dense 3D convolutions that PyTorch would run on its slow path, backward included.

With batch 1, PyTorch sends a float 3D convolution to oneDNN only when N·C·D·H > 20480
(``ConvParams::use_mkldnn``, aten/src/ATen/native/Convolution.cpp); smaller ones (SegResNet's
64 channels at 16³, 128 at 8³-12³ with 64³ patches) take ``slow_conv3d`` (im2col + GEMM,
parallel over the batch only, so single-threaded with batch 1), forward and backward. For those
layers, with fp32 CPU tensors outside autocast:

- forward: ``aten::mkldnn_convolution`` directly;
- input gradient: stride 1: the forward kernel with the transposed, flipped filter and padding
  ``k-1-p``; stride > 1: oneDNN's transposed convolution (``mkldnn::_convolution_transpose_pointwise``),
  or aten's backward where this build lacks it;
- weight gradient: ``dL/dw[o, i, a] = Σ_n,v g[n, o, v] · x_pad[n, i, s·v + a]`` is itself a
  convolution with batch and channels swapped: input ``x`` as (C_in, N, ...), filter ``g`` as
  (C_out, N, ...) dilated by the stride, cropped to the kernel. Used where it was measured to do
  less work than aten's (:func:`swap_weight_grad_pays`); aten's weight gradient elsewhere.

Where aten already runs oneDNN, its own forward and backward are kept, except for layers whose
input or output width is not a multiple of the vector unit's fp32 lanes (:data:`LANES`: 16 with
AVX-512, 8 otherwise). oneDNN then runs at about half speed: on the 2-core AVX-512 Xeon, a 3³ conv
at 64³ with 24 output channels runs at ~125 GFLOP/s and with 32 at ~230 (24→24 61 ms, 24→32
48 ms; 48→24 138 ms, 48→32 84 ms). Such a layer's output channels (and, for the input gradient,
its input channels) are padded with zero filters to the next multiple of LANES and the extra
channels dropped (:func:`lane_conv`): the same sums, less time. Only stride-1 layers on
channels-last inputs, where it was measured; the input width counts only when the input gradient is
needed. DALight-3D's 24-wide full-resolution layers are the case: training step 2.26 → 2.10 s at
64³, 9.22 → 8.68 s at 96³ (``bench_cpu_conv.py step --model dalight3d --patch 64 96 --variants
cpuconv-nopad cpuconv``); SegResNet's widths are multiples of 16 and it is unchanged.

Replacing aten's backward for the aligned oneDNN layers too (the
rule before) paid on an AVX2 EPYC, where oneDNN's weight gradient was slow, but not on a 2-core
AVX-512 Xeon (torch 2.13, channels-last SegResNet training step, 2 threads): 64³ 0.90 s with every
layer replaced, 0.80 s with the slow-path layers only, 1.11 s with aten alone; 128³ 6.70 / 6.31 /
6.20 s (all layers on oneDNN there, so aten's backward is the one to keep).

1×1×1 convolutions become :class:`glioseg.models.fast_conv.PointwiseConv3d` (a matrix product on
channels-last tensors), and depthwise / grouped convolutions are left alone (oneDNN already runs
them; DALight-3D's have their own kernels in ``fast_conv``). :func:`accelerate_cpu_convs` swaps the
class of eligible ``nn.Conv3d`` modules in place: no parameter or buffer changes, so ``state_dict``
keys and values, checkpoints and optimisers are untouched, and anything but fp32 CPU tensors
(CUDA, autocast, tracing, export) runs the plain ``nn.Conv3d`` code. The maths is the same
convolution; results agree with aten's to float32 rounding (the summation order differs).
benchmarks/bench_cpu_conv.py measures the effect per layer and on whole training steps.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from glioseg.models.fast_conv import PointwiseConv3d

log = logging.getLogger(__name__)

_ONES = (1, 1, 1)
# fp32 lanes of the widest vector unit PyTorch's CPU kernels use here (oneDNN blocks channels by it)
LANES = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
_TRANSPOSED = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_transpose_pointwise", None)


def aten_uses_mkldnn(input_shape, kernel, stride=_ONES) -> bool:
    """aten's own backend choice for an fp32 CPU conv, groups 1 (``ConvParams::use_mkldnn``)."""
    n, c, d, h = input_shape[:4]
    single_pointwise = (tuple(kernel[-2:]) == (1, 1) and all(s == 1 for s in stride) and n < 16
                        and torch.get_num_threads() == 1)
    return not single_pointwise and (n > 1 or (kernel[-1] > 3 and kernel[-2] > 3) or n * c * d * h > 20480)


def swap_weight_grad_pays(input_shape, kernel, stride) -> bool:
    """Whether the batch/channel-swapped weight gradient does less work than aten's.

    Measured per layer (benchmarks/bench_cpu_conv.py layers, 1 thread, CPU seconds, AVX2 EPYC):
    it wins 1.3-2.5x where aten runs ``slow_conv3d`` and for stride-1 layers of up to 32³ output
    voxels (oneDNN's weight gradient is slow there), and loses (1.2-1.5x) on the full-resolution
    layers of 48³ and more, and with stride 2, where the swapped filter is dilated.
    """
    if any(s != 1 for s in stride):
        return False
    voxels = input_shape[2] * input_shape[3] * input_shape[4]
    return voxels <= 32 ** 3 or not aten_uses_mkldnn(input_shape, kernel)


def mkldnn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride=_ONES, padding=(0, 0, 0), dilation=_ONES) -> torch.Tensor:
    """``F.conv3d`` (groups 1) always on oneDNN."""
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), list(dilation), 1)


def lane_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              stride=_ONES, padding=(0, 0, 0)) -> torch.Tensor:
    """:func:`mkldnn_conv` with the output channels padded to a multiple of :data:`LANES` by zero
    filters, and the padding dropped again; the result keeps the layout oneDNN returned."""
    extra = -weight.shape[0] % LANES
    if not extra:
        return mkldnn_conv(x, weight, bias, stride, padding)
    weight = torch.cat([weight, weight.new_zeros((extra, *weight.shape[1:]))])
    bias = None if bias is None else torch.cat([bias, bias.new_zeros(extra)])
    out = mkldnn_conv(x, weight, bias, stride, padding)
    channels_last = out.is_contiguous(memory_format=torch.channels_last_3d)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return out[:, : out.shape[1] - extra].contiguous(memory_format=layout)


def misaligned(c_in: int, c_out: int) -> bool:
    """Whether a layer's widths leave oneDNN's vector blocks part-empty (see :data:`LANES`)."""
    return bool(c_in % LANES or c_out % LANES)


def input_grad(grad: torch.Tensor, weight: torch.Tensor, input_shape, stride, padding) -> torch.Tensor:
    """dL/dx of ``conv3d(x, weight, stride, padding)`` for the output gradient ``grad``."""
    kernel = weight.shape[2:]
    if all(s == 1 for s in stride) and all(p <= k - 1 for p, k in zip(padding, kernel)):
        flipped = weight.transpose(0, 1).flip(2, 3, 4)
        return lane_conv(grad, flipped, None, padding=[k - 1 - p for k, p in zip(kernel, padding)])
    out_padding = [n - ((m - 1) * s - 2 * p + k)
                   for n, m, s, p, k in zip(input_shape[2:], grad.shape[2:], stride, padding, kernel)]
    if _TRANSPOSED is not None and all(0 <= o < s for o, s in zip(out_padding, stride)):
        return _TRANSPOSED(grad, weight, None, list(padding), out_padding, list(stride), list(_ONES), 1,
                           "none", [], "")
    return torch.nn.grad.conv3d_input(input_shape, weight, grad, stride, padding)


def swapped_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """dL/dw (C_out, C_in, *kernel) as one convolution of x (C_in, N, ...) with grad (C_out, N, ...)."""
    out = mkldnn_conv(x.transpose(0, 1), grad.transpose(0, 1), None, padding=padding, dilation=stride)
    return out[:, :, : kernel[0], : kernel[1], : kernel[2]].transpose(0, 1).contiguous()


def aten_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride, padding) -> torch.Tensor:
    return torch.nn.grad.conv3d_weight(x, weight.shape, grad, stride, padding)


class _Conv3dFn(torch.autograd.Function):
    """conv3d (groups 1, dilation 1) with the oneDNN forward and backward above."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, swap):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.swap = stride, padding, swap
        return lane_conv(x, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable   # the backward kernels have no derivatives of their own (no double backward)
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(grad, weight, x.shape, stride, padding)
        if ctx.needs_input_grad[1]:
            grad_w = (swapped_weight_grad(x, grad, weight.shape[2:], stride, padding) if ctx.swap
                      else aten_weight_grad(x, grad, weight, stride, padding))
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None, None, None


def _plain_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Anything but fp32 CPU eager tensors outside autocast, with oneDNN enabled, runs nn.Conv3d's code."""
    return (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or x.dim() != 5 or torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled
            or torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling())


class CpuConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` (groups 1, dilation 1, zero padding) whose fp32 CPU forward and backward run
    on glioseg's oneDNN calls where aten would take ``slow_conv3d`` or where a stride-1 layer's
    widths are not lane-aligned on a channels-last input (module docstring), and as ``nn.Conv3d``
    elsewhere. Made by :func:`accelerate_cpu_convs`, never constructed directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the input width matters only to the input gradient
        in_width = self.in_channels if x.requires_grad and torch.is_grad_enabled() else LANES
        padded = (self.stride == _ONES and misaligned(in_width, self.out_channels)
                  and x.is_contiguous(memory_format=torch.channels_last_3d))
        if _plain_path(x, self.weight) or (aten_uses_mkldnn(x.shape, self.kernel_size, self.stride) and not padded):
            return super().forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            swap = swap_weight_grad_pays(x.shape, self.kernel_size, self.stride)
            return _Conv3dFn.apply(x, self.weight, self.bias, self.stride, self.padding, swap)
        return lane_conv(x, self.weight, self.bias, self.stride, self.padding)


def _eligible(module: nn.Module) -> bool:
    return (type(module) is nn.Conv3d and module.groups == 1 and module.dilation == _ONES
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _pointwise(module: nn.Conv3d) -> bool:
    return module.kernel_size == _ONES and module.stride == _ONES and module.padding == (0, 0, 0)


def accelerate_cpu_convs(model: nn.Module) -> nn.Module:
    """Give every plain dense ``nn.Conv3d`` of ``model`` the fast CPU kernels, in place; returns it.

    A no-op for a model on CUDA (its convolutions keep cuDNN) or a torch built without oneDNN. Modules are switched by class only
    (1×1×1 stride 1: ``PointwiseConv3d``; others: :class:`CpuConv3d`), so parameters, ``state_dict``
    keys, optimiser state and hooks stay as they were. Idempotent.
    """
    if any(p.device.type == "cuda" for p in model.parameters()) or not torch.backends.mkldnn.is_available():
        return model
    counts = {"pointwise": 0, "dense": 0}
    for module in model.modules():
        if not _eligible(module):
            continue
        if _pointwise(module):
            module.__class__ = PointwiseConv3d
            counts["pointwise"] += 1
        else:
            module.__class__ = CpuConv3d
            counts["dense"] += 1
    log.info("CPU convolutions: %d dense on oneDNN, %d pointwise as matrix products",
             counts["dense"], counts["pointwise"])
    return model
