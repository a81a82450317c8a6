"""Timing of glioseg's Trainer for the benchmarks (never used by the library): a trainer callback.

``train(..., callbacks=[instrument_trainer(record, max_seconds=None, max_steps=None)])``: every
optimiser step's duration and end time, and every epoch's step loop, go into ``record``; once the
steps took ``max_seconds`` in all, or ``max_steps`` steps ran, the trainer stops after that step
(checkpointing it) and ``train`` raises :class:`StopTraining` (the trainer's ``RunStopped``).
"""
from __future__ import annotations

import time

from glioseg.training.callbacks import Callback, RunStopped

StopTraining = RunStopped


class instrument_trainer(Callback):   # noqa: N801 - the benchmarks' name for it since the patch days
    def __init__(self, record: dict, max_seconds: float | None = None, max_steps: int | None = None):
        self.record, self.max_seconds, self.max_steps = record, max_seconds, max_steps
        for key in ("step_seconds", "step_ends", "epoch_seconds"):
            record.setdefault(key, [])
        self.epoch_started = None

    def on_epoch_start(self, trainer) -> None:
        self.epoch_started = time.perf_counter()

    def on_step_end(self, trainer, step) -> None:
        self.record.setdefault("first_step_at", step.started)
        self.record["step_seconds"].append(step.seconds)
        self.record["step_ends"].append(step.ended)
        if ((self.max_seconds is not None and sum(self.record["step_seconds"]) >= self.max_seconds)
                or (self.max_steps is not None and len(self.record["step_seconds"]) >= self.max_steps)):
            trainer.request_stop("the benchmark's budget is spent")

    def on_epoch_end(self, trainer, epoch) -> None:
        self.record["epoch_seconds"].append(epoch.loop_seconds)
        self.epoch_started = None

    def on_train_end(self, trainer, end) -> None:
        if end.stopped and self.epoch_started is not None:   # the stopped epoch's loop so far
            self.record["epoch_seconds"].append(time.perf_counter() - self.epoch_started)
