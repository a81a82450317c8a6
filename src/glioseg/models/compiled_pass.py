"""One fused pass ``dy·a[n, c] + x·b[n, c] + c[n, c]`` over a channels-last tensor, compiled by
TorchInductor into one C++ loop (vectorised for the CPU it runs on, fp32 arithmetic for bf16).

Why: GroupNorm's backward ends in this per-channel sum (``fast_norm``). Written with PyTorch
operators it takes two passes over the activations (two multiply-adds, or two GEMMs against
diagonal matrices); PyTorch's own contiguous GroupNorm backward makes one pass after its
reduction. Fused, the channels-last backward reads and writes what the contiguous one does:
``benchmarks/bench_norm.py`` compares it with the other forms and with PyTorch's kernels
(docs/results/training-speed.md).

Compiling needs a C++ compiler (Inductor calls the system's) and takes seconds the first time in
a process (Inductor's on-disk cache shortens later processes). Where it fails, or where
``GLIOSEG_COMPILE=0`` turns it off, :func:`available` is False and ``fast_norm`` simply does not
offer this form; nothing else changes. Shapes are compiled dynamic, so one graph serves every
layer of a network per dtype (and per batch of one or more: Dynamo specialises size 1). The pass
is called without gradient tracking and with coefficients in its arithmetic's dtype, so that
nothing else multiplies the graphs; if Dynamo ever gives up on a call (its recompile limit), that
call runs the same maths in PyTorch operators.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

ENV = "GLIOSEG_COMPILE"


def scaled_sum_eager(dy: torch.Tensor, a: torch.Tensor, x: torch.Tensor, b: torch.Tensor,
                     c: torch.Tensor) -> torch.Tensor:
    """The sum in PyTorch operators, in fp32 arithmetic (fp64 for fp64), in x's dtype: the
    function that is compiled, and its reference."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, channels = x.shape[:2]

    def col(t):
        return t.to(acc).view(n, channels, 1, 1, 1)
    return (dy.to(acc) * col(a) + x.to(acc) * col(b) + col(c)).to(x.dtype)


@functools.lru_cache(maxsize=1)
def _compiled():
    return torch.compile(scaled_sum_eager, dynamic=True)


def _probe() -> bool:
    """Compile and run the pass once on a tiny tensor; False (with one warning) where it fails."""
    x = torch.zeros(1, 2, 2, 2, 2).contiguous(memory_format=torch.channels_last_3d)
    coefficients = torch.ones(1, 2)
    try:
        out = _compiled()(x, coefficients, x, coefficients, coefficients)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means "not offered here"
        log.warning("the compiled GroupNorm pass is not available on this machine (%s: %s); using "
                    "PyTorch operators instead", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    return bool(torch.equal(out, torch.ones_like(out)))


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the compiled pass works here (compiled once per process; ``GLIOSEG_COMPILE=0``: no)."""
    if os.environ.get(ENV, "").strip() in ("0", "false", "no", "off"):
        return False
    return _probe()


def scaled_sum_compiled(dy, a, x, b, c) -> torch.Tensor:
    """:func:`scaled_sum_eager` as one compiled pass; x's dtype and layout."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        out = _compiled()(dy, a.to(acc), x, b.to(acc), c.to(acc))
    # Inductor keeps the inputs' strides; a copy only where it ever would not (never seen)
    return out.contiguous(memory_format=torch.channels_last_3d)
