"""GroupNorm's passes over a channels-last tensor, compiled by TorchInductor into C++ loops
(vectorised for the CPU it runs on, fp32 arithmetic for bf16): the fused per-channel sum
``dy·a[n, c] + x·b[n, c] + c[n, c]`` and the per-channel reductions (Σ g·x, Σ g) and (Σ x², Σ x).

Why: GroupNorm's backward ends in this per-channel sum (``fast_norm``). Written with PyTorch
operators it takes two passes over the activations (two multiply-adds, or two GEMMs against
diagonal matrices); PyTorch's own contiguous GroupNorm backward makes one pass after its
reduction. Fused, the channels-last backward reads and writes what the contiguous one does:
``benchmarks/bench_norm.py`` compares it with the other forms and with PyTorch's kernels
(docs/results/training-speed.md).

The reductions are split explicitly into :data:`CHUNKS` partial sums per sample (a view, no copy)
and then added: Inductor runs the chunks in parallel and each in a vector loop over the channels.
Against ``native_batch_norm_backward`` (``fast_norm.channel_sums``) on 1×16×96³ bf16, 2 threads,
Sapphire Rapids: Σ g·x, Σ g 2.9 ms against 4.6 ms, Σ x², Σ x 1.9 against 3.0 ms; compiled without
the split (one reduction over all voxels, dynamic shapes) they were slower than PyTorch's. The
whole backward as one compiled graph (reductions, coefficients and the pass) ran 16-30x slower
than these pieces (tried twice, sessions 14 and 16), so the pieces stay separate calls.

Compiling needs a C++ compiler (Inductor calls the system's) and takes seconds the first time in
a process (Inductor's on-disk cache shortens later processes). Where it fails, or where
``GLIOSEG_COMPILE=0`` turns it off, :func:`available` is False and ``fast_norm`` simply does not
offer this form; nothing else changes. Shapes are compiled dynamic, so one graph serves every
layer of a network per dtype (and per batch of one or more: Dynamo specialises size 1). The passes
are called without gradient tracking and with coefficients in their arithmetic's dtype, so that
nothing else multiplies the graphs, under a recompile limit above the few graphs a process meets;
if Dynamo ever gave up on a call all the same, that call would run the same maths in PyTorch
operators.
"""
from __future__ import annotations

import functools
import logging
import math
import os

import torch

log = logging.getLogger(__name__)

ENV = "GLIOSEG_COMPILE"
# partial sums per sample in the reductions: a power of two, so that it divides the voxel counts of
# power-of-two patches at every level (the split is the largest divisor of the count up to this)
CHUNKS = 64
# Dynamo compiles one graph per dtype, per batch of one or more, per thread count (benchmarks set
# several) and, for the reductions, per length class (Inductor guards on chunks of ≥ 4097 voxels):
# more than its default of 8 per function, past which it would quietly run the eager maths
_RECOMPILE_LIMIT = 32
# bytes of one vector register (AVX-512) of the stored data: the pass's inner loop runs over the
# channels, and a row narrower than one vector (16 bf16 channels, SegResNet's first level) left
# Inductor's dynamic-shape loop at half speed (1×16×96³ bf16, 2 threads, Zen 4: 4.7 ms against
# 2.3 ms once rows were widened; fp32 and wider rows unchanged), so narrow rows are folded wider
VECTOR_BYTES = 64


def _accumulator(t: torch.Tensor) -> torch.dtype:
    """The arithmetic's dtype for ``t``: fp32 (fp64 for fp64)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scaled_sum_eager(dy: torch.Tensor, a: torch.Tensor, x: torch.Tensor, b: torch.Tensor,
                     c: torch.Tensor) -> torch.Tensor:
    """The sum in PyTorch operators, in fp32 arithmetic (fp64 for fp64), in x's dtype: the
    function that is compiled, and its reference."""
    acc = _accumulator(x)
    n, channels = x.shape[:2]

    def col(t):
        return t.to(acc).view(n, channels, 1, 1, 1)
    return (dy.to(acc) * col(a) + x.to(acc) * col(b) + col(c)).to(x.dtype)


def chunked(t: torch.Tensor) -> torch.Tensor:
    """The (N, chunks, voxels / chunks, C) view of a channels-last (N, C, X, Y, Z) tensor."""
    n, channels = t.shape[:2]
    return t.permute(0, 2, 3, 4, 1).reshape(n, math.gcd(t[0, 0].numel(), CHUNKS), -1, channels)


def dot_sums_eager(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ g·x, Σ g) per (sample, channel) of two :func:`chunked` views, summed in fp32 (fp64)."""
    g = g.to(_accumulator(x))
    return (g * x.to(g.dtype)).sum(2).sum(1), g.sum(2).sum(1)


def square_sums_eager(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ x², Σ x) per (sample, channel) of a :func:`chunked` view, summed in fp32 (fp64)."""
    x = x.to(_accumulator(x))
    return (x * x).sum(2).sum(1), x.sum(2).sum(1)


def _run(compiled, *args):
    """Call a compiled pass without gradient tracking, under this module's recompile limit (or the
    user's, where higher), which is the user's again afterwards."""
    # set and reset by hand: ``config.patch`` builds a context class a call, ~16 of a call's ~50 µs
    config = torch._dynamo.config
    user_limit = config.recompile_limit
    config.recompile_limit = max(user_limit, _RECOMPILE_LIMIT)
    try:
        with torch.no_grad():
            return compiled(*args)
    finally:
        config.recompile_limit = user_limit


@functools.lru_cache(maxsize=1)
def _compiled():
    return torch.compile(scaled_sum_eager, dynamic=True)


@functools.lru_cache(maxsize=1)
def _compiled_dots():
    return torch.compile(dot_sums_eager, dynamic=True)


@functools.lru_cache(maxsize=1)
def _compiled_squares():
    return torch.compile(square_sums_eager, dynamic=True)


def _probe() -> bool:
    """Compile and run the passes once on a small tensor; False (with one warning) where one fails."""
    # 128 voxels: CHUNKS chunks of 2, so no size-1 dimension is specialised away before real use
    x = torch.zeros(1, 2, 4, 4, 8).contiguous(memory_format=torch.channels_last_3d)
    coefficients = torch.ones(1, 2)
    try:
        out = _run(_compiled(), x, coefficients, x, coefficients, coefficients)
        dots = _run(_compiled_dots(), chunked(out), chunked(out.clone(memory_format=torch.channels_last_3d)))
        squares = _run(_compiled_squares(), chunked(out))
    except Exception as exc:  # noqa: BLE001 - any compiler failure means "not offered here"
        log.warning("the compiled GroupNorm pass is not available on this machine (%s: %s); using "
                    "PyTorch operators instead", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    voxels = torch.full((1, 2), 128.0)
    return bool(torch.equal(out, torch.ones_like(out)) and all(torch.equal(s, voxels) for s in (*dots, *squares)))


def switched_off() -> bool:
    """Whether ``GLIOSEG_COMPILE`` turns compiling at run time off (this pass and the native GroupNorm)."""
    return os.environ.get(ENV, "").strip() in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the compiled pass works here (compiled once per process; ``GLIOSEG_COMPILE=0``: no)."""
    return not switched_off() and _probe()


def fold_of(x: torch.Tensor) -> int:
    """How many neighbouring voxels along the last axis :func:`folded` puts into one row of
    channels: the fewest that fill :data:`VECTOR_BYTES` (1 where the axis does not divide)."""
    channels, depth = x.shape[1], x.shape[-1]
    fold = max(1, -(-VECTOR_BYTES // (channels * x.element_size())))
    return fold if depth % fold == 0 else 1


def folded(t: torch.Tensor, fold: int) -> torch.Tensor:
    """The channels-last (N, C, X, Y, Z) tensor as a channels-last (N, fold·C, X, Y, Z / fold) view:
    ``fold`` neighbouring voxels of the last axis side by side in one row (channel j·C + c of the
    view is channel c of voxel z·fold + j), so a per-channel pass sees wider rows; no copy."""
    if fold == 1:
        return t
    n, channels, *size = t.shape
    size[-1] //= fold
    return t.permute(0, 2, 3, 4, 1).reshape(n, *size, fold * channels).permute(0, 4, 1, 2, 3)


def unfolded(t: torch.Tensor, fold: int) -> torch.Tensor:
    """:func:`folded`'s inverse (a view)."""
    if fold == 1:
        return t
    n, wide, *size = t.shape
    size[-1] *= fold
    return t.permute(0, 2, 3, 4, 1).reshape(n, *size, wide // fold).permute(0, 4, 1, 2, 3)


def scaled_sum_compiled(dy, a, x, b, c) -> torch.Tensor:
    """:func:`scaled_sum_eager` as one compiled pass; x's dtype and layout."""
    acc, fold = _accumulator(x), fold_of(x)

    def coefficient(t):
        t = t.to(acc)
        return t if fold == 1 else t.repeat(1, fold)      # channel j·C + c of the folded view is channel c
    out = _run(_compiled(), folded(dy, fold), coefficient(a), folded(x, fold), coefficient(b), coefficient(c))
    # Inductor keeps the inputs' strides; a copy only where it ever would not (never seen)
    return unfolded(out, fold).contiguous(memory_format=torch.channels_last_3d)


def channel_sums_compiled(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ g·x, Σ g) over the voxels per (sample, channel) of two channels-last tensors: two (N, C)
    tensors in fp32 (fp64 for fp64), as ``fast_norm.channel_sums``; (Σ x², Σ x) in one read where
    ``g is x``."""
    if g is x:
        return _run(_compiled_squares(), chunked(x))
    return _run(_compiled_dots(), chunked(g), chunked(x))
