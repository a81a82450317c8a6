"""Hooks into a training run: ``Trainer(callbacks=[...])`` / ``train(..., callbacks=[...])``.

The trainer calls each callback's ``on_*`` methods in order, as nnU-Net's trainer calls its
``on_*`` hooks and MONAI's engines fire events to handlers: timing, budgets, extra checkpoints or
early stopping live in a callback, never in a patch of the trainer's methods. A hook sees the
trainer after the event (``trainer.step``, ``trainer.epoch``, ``trainer.run``, ``trainer.save``)
and may ask it to stop with :meth:`Trainer.request_stop`: after the current step's hooks the
trainer checkpoints ``last.pt``, calls ``on_train_end`` with the reason and raises
:class:`RunStopped`; the run folder is then not finished (no summary) and ``--resume`` continues
it. An exception a hook raises goes through ``train`` as any other (nothing is saved for it).

The trainer's own logs (steps.csv, metrics.csv) are the same with or without callbacks, so an
exact resume compares them bit for bit whatever watched the run.

Order of events in one run::

    on_train_start  (after a resume's restore; before the ``auto`` probe)
      on_epoch_start
        on_step_end      (once per optimiser step, after its periodic checkpoint)
      on_epoch_end     (after validation and the epoch's checkpoint)
    on_train_end    (summary written; or stopped)
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepEnd:
    """One finished optimiser step: ``step`` counts from 1 over the whole run; ``started`` is its
    ``time.perf_counter()`` at the start and ``seconds`` what the step took (batch to update)."""
    step: int
    epoch: int
    loss: float
    precision: str
    skipped: bool
    started: float
    seconds: float

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass(frozen=True)
class EpochEnd:
    """A finished epoch: ``epoch`` counts from 1; ``row`` is its metrics.csv row; ``loop_seconds``
    the step loop alone (loader included), ``row["seconds"]`` the epoch with its validation."""
    epoch: int
    row: dict = field(default_factory=dict)
    loop_seconds: float = 0.0


@dataclass(frozen=True)
class TrainEnd:
    """The run's end: ``stopped`` is None when every epoch ran (``summary`` is then the precision
    summary the run folder keeps), else the reason given to ``request_stop``."""
    summary: dict
    stopped: str | None = None


class RunStopped(Exception):
    """A callback stopped the run (``Trainer.request_stop``); its last checkpoint is the state after
    the step it stopped at, and the run can be resumed. Not an error of the user's input."""

    def __init__(self, reason: str, step: int, epoch: int):
        super().__init__(f"training stopped at step {step} (epoch {epoch + 1}): {reason}")
        self.reason, self.step, self.epoch = reason, step, epoch


class Callback:
    """Base class: every hook does nothing; override the ones needed."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_epoch_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: StepEnd) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: EpochEnd) -> None:
        pass

    def on_train_end(self, trainer, end: TrainEnd) -> None:
        pass


class StopAfterSteps(Callback):
    """Stop the run once ``steps`` optimiser steps ran in this attempt (a resumed run counts anew)."""

    def __init__(self, steps: int, reason: str = "step budget spent"):
        self.steps, self.reason, self.done = steps, reason, 0

    def on_step_end(self, trainer, step: StepEnd) -> None:
        self.done += 1
        if self.done >= self.steps:
            trainer.request_stop(self.reason)


class KeepSnapshots(Callback):
    """Keep a copy of the checkpoint every ``every`` optimiser steps, at the end of the epoch that
    reaches it (``RUN/snapshots/step-NNNNNN.pt``): held-out Dice against training steps (a learning
    curve) from one run, instead of one run per length."""

    def __init__(self, every: int):
        self.every = every

    def on_epoch_end(self, trainer, epoch: EpochEnd) -> None:
        # this epoch's steps crossed a multiple of ``every``: at most one copy per epoch, and no
        # state to carry across a resume
        if trainer.step >= self.every and trainer.step % self.every < trainer.config.steps_per_epoch:
            path = trainer.run.files.snapshot(trainer.step)
            if trainer.info.is_main:
                path.parent.mkdir(exist_ok=True)
            trainer.save(path)
