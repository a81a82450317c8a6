"""Forced precision probes: every branch of ``auto`` runs on every CPU, whatever it offers.

``fast``: the device offers native bf16 (``glioseg.precisions.native_precisions``, the capability
every ``auto`` starts from) and bf16 is timed at half fp32's time, so training's ``auto`` targets
bf16 and prediction picks it; ``slow``: no native low precision, so training's probe rules bf16
and fp16 out before timing and stays in fp32, and prediction picks fp32. Timed levels still run
their real step once (the code path is exercised); only the clock is fake. A probe that a test
drives with its own clock (injected times) is left alone.
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
    from glioseg import precisions
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
    native = ("fp32", "bf16") if mode == "fast" else ("fp32",)
    monkeypatch.setattr(precisions, "native_precisions", lambda device: native)
