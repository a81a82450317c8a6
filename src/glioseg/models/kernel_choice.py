"""Which implementation of a layer runs on this machine: measured once per shape, then remembered.

glioseg replaces some of PyTorch's CPU kernels where they are slow (``fast_norm``), but "slow"
depends on the CPU (AVX2, AVX-512, AVX512-BF16, AMX), the thread count, the precision and the
tensor's shape. Like ``torch.backends.cudnn.benchmark``, the first time a training step meets a
layer shape, every candidate (PyTorch's own kernel always among them) runs on a tensor of that
shape, interleaved (more rounds when the two fastest are within :data:`CLOSE`), and the fastest
wins; a replacement has to beat PyTorch's kernel by
:data:`MARGIN` or PyTorch's is kept, so a choice is never slower than torch's beyond the noise of
the measurement.

The decisions change float rounding (the kernels sum in another order), so a run keeps them: the
trainer stores :func:`decisions` in its checkpoints and a resumed run :func:`restore` s them before
its first step, which keeps resume bitwise exact. ``GLIOSEG_KERNELS=torch`` (or ``glioseg``)
skips the measurement and forces one side, for benchmarks and for debugging.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

import torch

log = logging.getLogger(__name__)

TORCH = "torch"
MARGIN = 0.05          # a replacement must be 5 % faster than torch's kernel to be chosen
# timed runs per candidate after one warm-up (the minimum is kept): with 2, a quiet 2-core Xeon
# picked a slower form for 2 of 20 GroupNorm shapes (up to 1.25x; bench_norm.py, session 14)
REPEATS = 5
CLOSE = 0.10           # the two fastest within 10 %: measured for REPEATS more rounds before choosing
ENV = "GLIOSEG_KERNELS"

_CHOICES: dict[str, str] = {}


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a 5-D tensor stored channels-last (and not also plain contiguous,
    as a one-channel tensor is), else ``contiguous_format``."""
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def random_like(t: torch.Tensor, generator: torch.Generator, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normal noise of ``t``'s shape and layout (in ``dtype``, default ``t``'s) from ``generator``:
    the tensors a measurement runs on, drawn so that the run's own random streams do not move."""
    noise = torch.randn(t.shape, generator=generator).to(dtype or t.dtype)
    return noise.contiguous(memory_format=layout_of(t))


def key_of(op: str, x: torch.Tensor, *extra) -> str:
    """The cache key of one layer call: op, shape, dtype, layout, thread count and extras."""
    layout = "cl" if layout_of(x) == torch.channels_last_3d else "cf"
    shape = "x".join(str(s) for s in x.shape)
    parts = [op, shape, str(x.dtype).removeprefix("torch."), layout, f"t{torch.get_num_threads()}", *map(str, extra)]
    return "/".join(parts)


def fastest(times: Mapping[str, float], margin: float = MARGIN) -> str:
    """The candidate with the least time; torch's own unless another beats it by ``margin``."""
    best = min(times, key=times.__getitem__)
    if TORCH in times and best != TORCH and times[best] > times[TORCH] * (1 - margin):
        return TORCH
    return best


def measure(candidates: Mapping[str, Callable[[], object]], repeats: int = REPEATS,
            clock: Callable[[], float] = time.perf_counter, close: float = CLOSE) -> dict[str, float]:
    """Seconds per call of each candidate: one warm-up each, then ``repeats`` interleaved rounds
    (A B C A B C ...: a change of load hits every candidate alike); the minimum of each. When the
    two fastest are within ``close`` of each other, ``repeats`` more rounds decide (once)."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    _timed_rounds(candidates, repeats, clock, times)
    if _too_close([min(values) for values in times.values()], close):
        _timed_rounds(candidates, repeats, clock, times)
    return {name: min(values) for name, values in times.items()}


def _timed_rounds(candidates: Mapping[str, Callable[[], object]], repeats: int,
                  clock: Callable[[], float], times: dict[str, list[float]]) -> None:
    for _ in range(repeats):
        for name, run in candidates.items():
            start = clock()
            run()
            times[name].append(clock() - start)


def _too_close(best_times: list[float], close: float) -> bool:
    # a 10 % gap between two forms flipped between measurements of one process (bench_norm on a
    # Zen 4, session 17: the choice took the form 10 % slower); more rounds make the minima steadier
    if len(best_times) < 2:
        return False
    first, second = sorted(best_times)[:2]
    return second < first * (1 + close)


def torch_forced() -> bool:
    """Whether ``GLIOSEG_KERNELS=torch`` asks for PyTorch's kernels everywhere."""
    return os.environ.get(ENV, "").strip() == TORCH


def forced(names: tuple[str, ...]) -> str | None:
    """The implementation ``GLIOSEG_KERNELS`` names: ``torch``, ``glioseg`` (the first of ``names``
    that is not torch's) or one of ``names``; None when unset."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if value == "glioseg":
        return next(name for name in names if name != TORCH)
    if value not in names:
        raise ValueError(f"{ENV}={value!r}: expected torch, glioseg or one of {', '.join(names)}")
    return value


def choose(key: str, names: tuple[str, ...], make_candidates: Callable[[], Mapping[str, Callable[[], object]]]) -> str:
    """The implementation for ``key`` among ``names``: forced by ``GLIOSEG_KERNELS``, remembered,
    or measured now on the runs ``make_candidates()`` returns (built only when measuring)."""
    chosen = forced(names)
    if chosen is not None:
        return chosen
    if key in _CHOICES and _CHOICES[key] not in names:
        # a run resumed on a machine that cannot run its saved choice (the compiled pass without
        # a C++ compiler): measured anew among what this machine has
        log.warning("kernel %s: the saved choice %r is not available here (%s); measuring again",
                    key, _CHOICES.pop(key), ", ".join(names))
    if key not in _CHOICES:
        with torch.enable_grad():
            times = measure(make_candidates())
        _CHOICES[key] = fastest(times)
        log.debug("kernel %s: %s (%s)", key, _CHOICES[key],
                 ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in times.items()))
    return _CHOICES[key]


def remembered(key: str) -> str | None:
    """The choice made or restored for ``key`` where ``GLIOSEG_KERNELS`` forces nothing; None
    otherwise. Lets a caller skip building its candidate names (which may cost a compiler probe)."""
    return None if os.environ.get(ENV, "").strip() else _CHOICES.get(key)


def decisions() -> dict[str, str]:
    """Every choice made in this process (key → implementation), for a checkpoint."""
    return dict(_CHOICES)


def restore(saved: Mapping[str, str] | None) -> None:
    """Adopt a run's saved choices (a resumed run then computes exactly as before)."""
    _CHOICES.update(saved or {})


def forget() -> None:
    """Drop every choice (tests; a new machine)."""
    _CHOICES.clear()
