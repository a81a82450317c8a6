"""Timing hooks around glioseg's Trainer for the benchmarks (never used by the library).

``with instrument_trainer(record, max_seconds=None, max_steps=None):`` wraps ``Trainer._train_step``
and ``Trainer._run_epoch`` of this process (restored on exit): every optimiser step's duration and end time, and every
epoch loop's duration, go into ``record``; once the steps took ``max_seconds`` in all, or
``max_steps`` steps ran, the step in progress finishes and :class:`StopTraining` is raised
(``glioseg.training.trainer.train`` lets it through; the run folder keeps its last checkpoint).
"""
from __future__ import annotations

import contextlib
import time


class StopTraining(Exception):
    """The benchmark's budget (seconds or steps) is spent."""


@contextlib.contextmanager
def instrument_trainer(record: dict, max_seconds: float | None = None, max_steps: int | None = None):
    from glioseg.training import trainer as trainer_module

    record.setdefault("step_seconds", [])
    record.setdefault("step_ends", [])
    record.setdefault("epoch_seconds", [])
    step, run_epoch = trainer_module.Trainer._train_step, trainer_module.Trainer._run_epoch

    def timed_step(self, batch):
        record.setdefault("first_step_at", time.perf_counter())
        start = time.perf_counter()
        result = step(self, batch)
        end = time.perf_counter()
        record["step_seconds"].append(end - start)
        record["step_ends"].append(end)
        if ((max_seconds is not None and sum(record["step_seconds"]) >= max_seconds)
                or (max_steps is not None and len(record["step_seconds"]) >= max_steps)):
            raise StopTraining
        return result

    def timed_epoch(self):
        start = time.perf_counter()
        try:
            return run_epoch(self)
        finally:
            record["epoch_seconds"].append(time.perf_counter() - start)

    trainer_module.Trainer._train_step, trainer_module.Trainer._run_epoch = timed_step, timed_epoch
    try:
        yield record
    finally:
        trainer_module.Trainer._train_step, trainer_module.Trainer._run_epoch = step, run_epoch
