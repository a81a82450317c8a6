"""``--precision auto`` for prediction: time one window per native precision, keep the fastest.

Training's controller probes real training steps; prediction needs less: the forward pass of one
window of the network's training-patch size. Only precisions the device computes natively are
timed (:func:`glioseg.precisions.native_precisions`): on a CPU without AVX512-BF16 / AMX, bf16 is
2.5-90x slower than fp32, so nothing is timed there and fp32 is chosen at once. A low precision is
chosen only when it is at least ``min_gain`` faster than fp32; windows whose low-precision logits
are not finite are still re-run in fp32 (:class:`glioseg.inference.predictor.GuardedWindow`), and
the stitching stays fp32.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from glioseg.precisions import DTYPES, describe_device, device_sync, native_precisions

log = logging.getLogger(__name__)

MIN_GAIN = 0.05   # as training's controller: a level must be 5 % faster than fp32 to be chosen


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision prediction runs in, why, and the seconds per probe window it measured."""

    precision: str
    reason: str
    times: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason,
                "times_s": {p: (round(t, 4) if math.isfinite(t) else None) for p, t in self.times.items()}}


def time_precisions(run_window: Callable[[str], None], levels: Sequence[str], *, repeats: int = 2,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of ``run_window(precision)`` per level: one untimed warm-up each (kernel
    selection, caches), then ``repeats`` rounds that time every level once, so a change of machine
    load hits all levels alike."""
    for level in levels:
        run_window(level)
    samples: dict[str, list[float]] = {level: [] for level in levels}
    for _ in range(repeats):
        for level in levels:
            start = clock()
            run_window(level)
            samples[level].append(clock() - start)
    return {level: statistics.median(values) for level, values in samples.items()}


def pick(times: dict[str, float], min_gain: float = MIN_GAIN) -> str:
    """The fastest level at least ``min_gain`` faster than fp32, else fp32."""
    fastest = min(times, key=times.get)
    return fastest if fastest != "fp32" and times[fastest] < (1.0 - min_gain) * times["fp32"] else "fp32"


def choose_precision(run_window: Callable[[str], None], device: torch.device | str, *,
                     repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> PrecisionChoice:
    """Probe ``run_window`` (one forward pass of a window, any precision) on ``device``."""
    where = describe_device(device)
    levels = native_precisions(device)
    if levels == ("fp32",):
        return PrecisionChoice("fp32", f"fp32: no native low precision on {where}", {"fp32": math.nan})
    times = time_precisions(run_window, levels, repeats=repeats, clock=clock)
    chosen = pick(times)
    measured = ", ".join(f"{p} {t:.3g} s/window" for p, t in times.items())
    verdict = (f"{chosen}, {times['fp32'] / times[chosen]:.2f}x fp32" if chosen != "fp32"
               else "fp32: not beaten by a native low precision here")
    return PrecisionChoice(chosen, f"probe on {where}: {measured}; {verdict}", times)


def window_runner(network, window: Sequence[int], channels: int, device: torch.device | str,
                  site_id: int | None = None) -> Callable[[str], None]:
    """``run_window(precision)``: one no-grad forward of a random ``window``-sized input."""
    device = torch.device(device)
    x = torch.randn(1, channels, *window, generator=torch.Generator().manual_seed(0)).to(device)
    sync = device_sync(device)

    @torch.no_grad()
    def run_window(precision: str) -> None:
        low = precision != "fp32"
        with torch.autocast(device.type, dtype=DTYPES[precision] if low else torch.float32, enabled=low):
            network(x, site_id)
        sync()

    return run_window
