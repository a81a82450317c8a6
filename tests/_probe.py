"""Forced precision probes: every branch of ``auto`` runs on every CPU, whatever it offers.

``fast``: bf16 is timed at half fp32's time and fp16 at twice, so training's ``auto`` targets bf16,
and prediction sees a CPU with native bf16 (it decides by capability alone), so it picks bf16;
``slow``: bf16 at 3x and fp16 at 5x, so fp32 stays, and prediction sees no native low precision.
The real step still runs once in every precision (its code path is exercised); only the clock is
fake. The conv pre-screen and the native-precision check are bypassed, since they read the
hardware; a probe that a test drives with its own clock (injected times) is left alone.
"""
from __future__ import annotations

import os
import time

import pytest

PROBE_ENV = "GLIOSEG_TEST_PROBE"
FACTORS = {"fast": {"fp32": 1.0, "bf16": 0.5, "fp16": 2.0}, "slow": {"fp32": 1.0, "bf16": 3.0, "fp16": 5.0}}


def probe_mode() -> str:
    mode = os.environ.get(PROBE_ENV, "real")
    if mode != "real" and mode not in FACTORS:
        raise pytest.UsageError(f"{PROBE_ENV}={mode!r}; use real, fast or slow")
    return mode


def force_probe(monkeypatch, mode: str) -> None:
    """Fake the probes' measurements; a probe that a test gives its own clock keeps it."""
    from glioseg.inference import precision as inference_precision
    from glioseg.training.precision import controller as training_precision

    factors = FACTORS[mode]
    real_measure = training_precision.measure_step_times

    def measure_step_times(step_fn, candidates, *, clock, **options):
        if clock is not time.perf_counter:
            return real_measure(step_fn, candidates, clock=clock, **options)
        for level in candidates:
            step_fn(level)
        return {level: factors[level] for level in candidates}, {}

    monkeypatch.setattr(training_precision, "measure_step_times", measure_step_times)
    monkeypatch.setattr(training_precision, "conv_prescreen", lambda *args, **kwargs: {})
    native = ("fp32", "bf16") if mode == "fast" else ("fp32",)
    monkeypatch.setattr(inference_precision, "native_precisions", lambda device: native)
