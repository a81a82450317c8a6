"""GroupNorm for channels-last 3D tensors on the CPU, forward and backward, fp32 and bf16.

SegResNet runs channels-last (oneDNN's convolutions train fastest that way), and PyTorch's
``native_group_norm_backward`` is slow on that layout: GroupNorm(8, 32) on 1×32×96³, 1 thread,
Sapphire Rapids: 171 ms fp32 / 463 ms bf16 channels-last against 108 / 72 ms contiguous, and 55 %
of a bf16 SegResNet step at 96³. The maths here is GroupNorm's, written as per-channel passes that
PyTorch already runs fast on channels-last memory:

- statistics: per (sample, channel) Σx and Σx² in one pass, accumulated in fp32 (fp64 for fp64):
  ``native_batch_norm_backward`` with mean 0 and inverse std 1 returns exactly Σ g·x and Σ g per
  channel, and with g = x gives both sums (the ``"compiled"`` form uses compiled reductions
  instead, faster on the large levels); groups then add their channels' sums
  (mean = Σx / M, var = Σx² / M - mean², as PyTorch's own channels-last kernel does);
- forward: y = x·a[n, c] + b[n, c], one pass in fp32 arithmetic (inference-mode batch norm with
  mean 0, variance 1, eps 0 computes exactly that);
- backward: Σ dy·x and Σ dy per channel in one pass as above; then, with PyTorch's coefficients
  (aten/src/ATen/native/cpu/group_norm_kernel.cpp), dx = dy·(rstd·γ) + x·c2 + c3 per group,
  as two broadcast multiply-adds over the (N, X, Y, Z, C) view (``"addcmul"``, two passes; fp32
  only, since bf16 coefficients would lose c3's cancellation against the mean), as two matrix
  products against diagonal matrices on the (voxels, C) view (``"matmul"``: oneDNN / AMX do the
  scaled adds at GEMM speed, accumulating in fp32), as two one-pass affines and an add
  (``"affine"``), or as one pass compiled by TorchInductor (``"compiled"``, fp32 arithmetic; only
  where this machine can compile, :mod:`glioseg.models.compiled_pass`).

The ``"native"`` form is the whole GroupNorm, forward and backward, as two calls into a small C++
library built on this machine (:mod:`glioseg.models.native_norm`; fp32 and bf16): the same maths
without the per-call cost of the operators above, which is most of a GroupNorm at the small levels.
``"native-bwd"`` is PyTorch's own forward (``aten.native_group_norm``, whose statistics the library's
backward takes) with the library's backward: at the small levels PyTorch's channels-last forward is
the faster one and its backward the slow one.

Which of PyTorch's kernel and these runs is measured per shape, precision and thread count on the
machine (:mod:`glioseg.models.kernel_choice`). Parameters and ``state_dict``
are ``nn.GroupNorm``'s; tests check the gradients with ``gradcheck`` in fp64 and against
``F.group_norm`` in fp32 and bf16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from glioseg.models import compiled_pass, kernel_choice, native_norm

_BN = torch.ops.aten.native_batch_norm
_BN_BWD = torch.ops.aten.native_batch_norm_backward
APPLY = ("addcmul", "matmul", "affine", "compiled", "native", "native-bwd")
# forms that need a compiler on this machine: a restored choice of one is checked again
_NATIVE = ("native", "native-bwd")
_BUILT = ("compiled", *_NATIVE)
# bf16 coefficients would lose the mean's cancellation (c3 ≈ -c2·mean): addcmul is for fp32 / fp64
_ROUNDED_COEFFICIENTS = ("addcmul",)
_FAST_DTYPES = (torch.float32, torch.bfloat16)


def channel_sums(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ g·x, Σ g) over the voxels, per (sample, channel): two (N, C) tensors in fp32 (fp64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    zero, one = x.new_zeros(x.shape[1], dtype=acc), x.new_ones(x.shape[1], dtype=acc)
    pairs = [_BN_BWD(g[n:n + 1], x[n:n + 1], one, None, None, zero, one, True, 0.0, [False, True, True])[1:]
             for n in range(x.shape[0])]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x·scale[n, c] + shift[n, c] in one pass with fp32 arithmetic; x's dtype and layout."""
    zero, one = scale.new_zeros(x.shape[1]), scale.new_ones(x.shape[1])
    parts = [_BN(x[n:n + 1], scale[n], shift[n], zero, one, False, 0.0, 0.0)[0] for n in range(x.shape[0])]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """The (voxels, C) view of one channels-last sample (C, X, Y, Z)."""
    return t.permute(1, 2, 3, 0).reshape(-1, t.shape[0])


def scaled_sum_matmul(dy, a, x, b, c) -> torch.Tensor:
    """dy·a[n, c] + x·b[n, c] + c[n, c] as two matrix products with diagonal matrices per sample."""
    outs = []
    for n in range(x.shape[0]):
        rows = _rows(x[n])
        out = torch.addmm(c[n].to(x.dtype).expand_as(rows), rows, torch.diag(b[n]).to(x.dtype))
        out.addmm_(_rows(dy[n]), torch.diag(a[n]).to(x.dtype))
        outs.append(out.view(1, *x.shape[2:], x.shape[1]).permute(0, 4, 1, 2, 3))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def scaled_sum_addcmul(dy, a, x, b, c) -> torch.Tensor:
    """The same sum as two broadcast multiply-adds over the (N, X, Y, Z, C) view: two passes, in
    x's dtype (for bf16 the coefficients would be rounded to bf16: only offered for fp32/fp64)."""
    def view(t):
        return t.to(x.dtype).view(t.shape[0], 1, 1, 1, t.shape[1])
    out = torch.addcmul(view(c), x.permute(0, 2, 3, 4, 1), view(b))
    return out.addcmul_(dy.permute(0, 2, 3, 4, 1), view(a)).permute(0, 4, 1, 2, 3)


def scaled_sum_affine(dy, a, x, b, c) -> torch.Tensor:
    """The same sum as two one-pass channel affines and an in-place add."""
    out = channel_affine(dy, a, torch.zeros_like(a))
    return out.add_(channel_affine(x, b, c))


def sums_for(apply: str):
    """The per-channel reductions of backward form ``apply``: compiled ones go with the compiled
    pass (the compiler is known to work there), PyTorch's batch-norm backward otherwise."""
    return compiled_pass.channel_sums_compiled if apply == "compiled" else channel_sums


def group_moments(x: torch.Tensor, groups: int, eps: float, sums=channel_sums) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/sqrt(var + eps) per (sample, group), biased variance, fp32 (fp64 for fp64)."""
    sq, s = sums(x, x)
    count = x[0].numel() // groups
    mean = s.view(len(s), groups, -1).sum(-1) / count
    var = (sq.view(len(sq), groups, -1).sum(-1) / count - mean * mean).clamp_min(0)
    return mean, (var + eps).rsqrt()


def per_channel(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., G) → (..., C): each group's value for each of its channels."""
    return t.repeat_interleave(channels // t.shape[-1], dim=-1)


def _affine_params(weight, bias, channels, like):
    w = like.new_ones(channels) if weight is None else weight.to(like.dtype)
    b = like.new_zeros(channels) if bias is None else bias.to(like.dtype)
    return w, b


class _GroupNormFn(torch.autograd.Function):
    """GroupNorm on a channels-last (N, C, X, Y, Z) tensor with the passes of the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, apply):
        channels = x.shape[1]
        with torch.autocast("cpu", enabled=False):
            mean, rstd = group_moments(x, groups, eps, sums_for(apply))
            w, b = _affine_params(weight, bias, channels, mean)
            scale = per_channel(rstd, channels) * w
            y = channel_affine(x, scale, b - per_channel(mean, channels) * scale)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups, ctx.apply_kind = groups, apply
        return y

    @staticmethod
    @once_differentiable   # no double backward (the passes have no derivatives of their own)
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            dy = dy.contiguous(memory_format=torch.channels_last_3d)
            return _group_norm_backward(dy, x, weight, mean, rstd, ctx.groups, ctx.apply_kind,
                                        ctx.needs_input_grad)


def backward_coefficients(sdx, sd, w, mean, rstd, count):
    """GroupNorm's backward in per-channel terms: dx = dy·a + x·b + c and γ's gradient's factor.

    From the per-(sample, channel) sums Σ dy·x and Σ dy, γ (per channel) and the forward's
    per-(sample, group) mean and rstd, with PyTorch's coefficients (group_norm_kernel.cpp). Returns
    (a, b, c, mean, rstd), each (N, C); all group values expanded in one call, since at the small
    levels these few-element operators are a visible part of the backward."""
    n, groups = mean.shape
    ds, db = (torch.stack((sdx, sd)) * w).view(2, n, groups, -1).sum(-1)   # Σ dy·γ·x, Σ dy·γ per group
    c2 = (db * mean - ds) * rstd.pow(3) / count
    c3 = -c2 * mean - db * rstd / count
    rstd_c, c2_c, c3_c, mean_c = per_channel(torch.stack((rstd, c2, c3, mean)), len(w))
    return rstd_c * w, c2_c, c3_c, mean_c, rstd_c


def _group_norm_backward(dy, x, weight, mean, rstd, groups, apply, needs):
    count = x[0].numel() // groups
    sdx, sd = sums_for(apply)(dy, x)
    w, _ = _affine_params(weight, None, x.shape[1], mean)
    a, b, c, mean_c, rstd_c = backward_coefficients(sdx, sd, w, mean, rstd, count)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        combine = {"addcmul": scaled_sum_addcmul, "matmul": scaled_sum_matmul, "affine": scaled_sum_affine,
                   "compiled": compiled_pass.scaled_sum_compiled}[apply]
        grad_x = combine(dy, a, x, b, c)
    if weight is not None and needs[1]:
        grad_w = ((sdx - mean_c * sd) * rstd_c).sum(0).to(weight.dtype)
    if weight is not None and needs[2]:
        grad_b = sd.sum(0).to(weight.dtype)
    return grad_x, grad_w, grad_b, None, None, None


def offered(kind: str, dtype: torch.dtype) -> bool:
    """Whether form ``kind`` is offered for ``dtype`` here; only "compiled" and the native forms ask
    their compiler probes (seconds, once per process; the native forms are fp32 / bf16 only)."""
    if kind not in APPLY or (dtype == torch.bfloat16 and kind in _ROUNDED_COEFFICIENTS):
        return False
    if kind in _NATIVE:
        return dtype in native_norm.DTYPES and native_norm.available()
    return kind != "compiled" or compiled_pass.available()


def applies(dtype: torch.dtype) -> tuple[str, ...]:
    """The backward forms offered for ``dtype`` on this machine."""
    return tuple(kind for kind in APPLY if offered(kind, dtype))


def fast_group_norm(x, groups, weight=None, bias=None, eps=1e-5, apply: str = "matmul") -> torch.Tensor:
    """GroupNorm through this module's passes (any float dtype; channels-last 5-D input)."""
    if not offered(apply, x.dtype):
        raise ValueError(f"apply must be one of {applies(x.dtype)} for {x.dtype}, got {apply!r}")
    if apply in _NATIVE:
        return native_norm.group_norm(x, groups, weight, bias, eps, torch_forward=apply == "native-bwd")
    return _GroupNormFn.apply(x.contiguous(memory_format=torch.channels_last_3d), weight, bias, groups, eps, apply)


def _fast_path(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Training on channels-last fp32/bf16 CPU tensors, eager: where the replacement can pay."""
    return (x.device.type == "cpu" and x.dtype in _FAST_DTYPES and x.dim() == 5
            and x.is_contiguous(memory_format=torch.channels_last_3d) and torch.is_grad_enabled()
            and (x.requires_grad or (weight is not None and weight.requires_grad))
            and not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()))


def _candidates(x, groups, weight, bias, eps) -> dict:
    """Forward + backward of each implementation on a random tensor like ``x`` (for the choice)."""
    # a private generator: the choice must not move the run's random streams (bitwise resume)
    generator = torch.Generator().manual_seed(0)
    probe = kernel_choice.random_like(x, generator).requires_grad_(True)
    w = None if weight is None else weight.detach().clone().requires_grad_(True)
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    grad = kernel_choice.random_like(x, generator)

    def run(fn):
        return lambda: fn(probe, groups, w, b, eps).backward(grad)
    runs = {kernel_choice.TORCH: run(F.group_norm)}
    runs.update({kind: run(lambda *a, kind=kind: fast_group_norm(*a, apply=kind)) for kind in applies(x.dtype)})
    return runs


def torch_group_norm(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm``, with a channels-last ``x`` that needs no gradient made contiguous first:
    PyTorch 2.13's channels-last backward crashes (SIGSEGV in
    ``GroupNormBackwardKernelImplChannelsLastInternal``) when only γ and β need gradients, as in
    training with frozen layers before a norm."""
    if (x.dim() == 5 and not x.requires_grad and weight is not None and weight.requires_grad
            and torch.is_grad_enabled() and not x.is_contiguous()):
        x = x.contiguous()
    return F.group_norm(x, groups, weight, bias, eps)


def group_norm(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm``, or this module's passes where they measured faster for this shape."""
    if not _fast_path(x, weight) or kernel_choice.torch_forced():
        return torch_group_norm(x, groups, weight, bias, eps)
    key = kernel_choice.key_of("group_norm", x, groups, weight is not None)
    kind = kernel_choice.remembered(key)
    # applies() probes the compilers (seconds, once per process): only where a choice is still to be
    # made, or where a restored "compiled" or "native" must be checked against this machine
    if kind is None or kind in _BUILT:
        kind = kernel_choice.choose(key, (kernel_choice.TORCH, *applies(x.dtype)),
                                    lambda: _candidates(x, groups, weight, bias, eps))
    if kind == kernel_choice.TORCH:
        return torch_group_norm(x, groups, weight, bias, eps)
    return fast_group_norm(x, groups, weight, bias, eps, apply=kind)


class FastGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose channels-last CPU training runs :func:`group_norm`; made by
    :func:`accelerate_cpu_norms` (a class swap: parameters and ``state_dict`` unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def accelerate_cpu_norms(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.GroupNorm`` of ``model`` to :class:`FastGroupNorm`, in place; returns it.
    A no-op on CUDA models. Idempotent."""
    if any(p.device.type == "cuda" for p in model.parameters()):
        return model
    for module in model.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = FastGroupNorm
    return model
