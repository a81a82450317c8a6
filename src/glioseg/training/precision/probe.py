"""Which precisions a device supports, and which is fastest for the real training step.

``supported_precisions(device)`` tries autocast with each dtype on the device (CUDA bf16 also
needs native support, not emulation). ``measure_step_times`` times a caller-supplied step at
each precision; ``rank_precisions`` turns the times into a target precision and the ladder of
levels the controller may use. A precision that is not measurably faster than fp32 is never
chosen for speed: on AVX2-only CPUs bf16 and fp16 training steps are 5-90x slower than fp32.

Every decision that must be the same on all ranks of a distributed run goes through
``agree(flag) -> bool`` (an OR across ranks; identity for one process): the step function
may run collective operations (DDP's gradient all-reduce), so all ranks must run it the
same number of times.
"""
from __future__ import annotations

import statistics
import warnings
from typing import Callable

import torch

from glioseg.errors import InputError
from glioseg.precisions import DTYPES, PRECISIONS, native_precisions

Agree = Callable[[bool], bool]


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Run one matmul under autocast; supported when it really computes in ``dtype``."""
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        return False
    if device.type == "cuda" and dtype is torch.bfloat16 and "bf16" not in native_precisions(device):
        return False
    try:
        with warnings.catch_warnings():
            # older torch warns and silently disables autocast for unsupported CPU dtypes
            warnings.simplefilter("ignore")
            with torch.autocast(device.type, dtype=dtype):
                x = torch.ones(4, 4, device=device)
                out = x @ x
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return False
    return out.dtype == dtype


def supported_precisions(device: torch.device | str) -> tuple[str, ...]:
    """Precisions usable for autocast training on ``device``, safest first (fp32 always)."""
    device = torch.device(device)
    return ("fp32",) + tuple(p for p in PRECISIONS[1:] if _autocast_works(device, DTYPES[p]))


def check_supported(policy: str, device: torch.device | str) -> tuple[str, ...]:
    """The precisions ``device`` can autocast in; a fixed ``policy`` it cannot is an InputError
    (the one check of a precision name against a device: preflight's, the controller's)."""
    supported = supported_precisions(device)
    if policy != "auto" and policy not in supported:
        raise InputError(f"precision {policy} is not supported on {torch.device(device)} "
                         f"(supported here: {', '.join(supported)})")
    return supported


def measure_step_times(step_fn: Callable[[str], None], candidates: tuple[str, ...], *,
                       clock: Callable[[], float], sync: Callable[[], None], warmup: int,
                       steps: int, give_up: float,
                       agree: Agree = lambda flag: flag) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per step of each candidate (``fp32`` must come first) and notes.

    Warm-up steps first (one-time costs: kernel selection, caches), then ``steps`` rounds
    that time every level once each, so that a change of machine load hits all levels
    alike. A low precision stops as soon as one step takes more than ``give_up`` times
    fp32's (a warm-up step against fp32's warm-up step): it cannot win, and each of its
    steps can cost minutes on a CPU without native bf16/fp16. Its time is then that step's.
    """
    if candidates[0] != "fp32":
        raise ValueError(f"the probe needs fp32 as its reference first, got {candidates}")

    def timed(precision: str) -> float:
        start = clock()
        step_fn(precision)
        sync()
        return clock() - start

    times: dict[str, float] = {}
    notes: dict[str, str] = {}
    reference = [timed("fp32") for _ in range(warmup)]
    alive = ["fp32"]
    for precision in candidates[1:]:
        for index in range(warmup):
            seconds = timed(precision)
            if agree(seconds > give_up * reference[index]):
                times[precision] = seconds
                notes[precision] = (f"stopped in warm-up: {seconds:.3g} s/step against "
                                    f"fp32's {reference[index]:.3g} s")
                break
        else:
            alive.append(precision)
    samples: dict[str, list[float]] = {p: [] for p in alive}
    for _ in range(steps):
        for precision in list(alive):
            samples[precision].append(timed(precision))
            if precision != "fp32" and agree(
                    samples[precision][-1] > give_up * statistics.median(samples["fp32"])):
                notes[precision] = (f"stopped: {samples[precision][-1]:.3g} s/step, over "
                                    f"{give_up:g}x fp32")
                alive.remove(precision)
    times.update({p: statistics.median(v) for p, v in samples.items()})
    return {p: times[p] for p in candidates}, notes


def rank_precisions(times: dict[str, float], min_gain: float,
                    agree: Agree = lambda flag: flag) -> tuple[str, list[str]]:
    """``(target, ladder)`` from measured seconds per step (``fp32`` must be measured).

    A low precision qualifies when it is at least ``min_gain`` (a fraction) faster than
    fp32 on every rank. The target is the least safe level that beats every safer measured
    level, i.e. the fastest qualifying one; the ladder is fp32 plus the qualifying levels up
    to the target, safest first, and is what fallback walks down.
    """
    levels = [p for p in PRECISIONS if p in times]
    slower: dict[tuple[str, str], bool] = {}
    for i, candidate in enumerate(levels):
        for safer in levels[:i]:
            bar = times[safer] * (1.0 - min_gain) if safer == "fp32" else times[safer]
            slower[(candidate, safer)] = agree(not times[candidate] < bar)
    target = next(c for c in reversed(levels)
                  if not any(slower[(c, s)] for s in levels[:levels.index(c)]))
    ladder = [p for p in levels[:levels.index(target) + 1]
              if p == "fp32" or not slower[(p, "fp32")]]
    return target, ladder
