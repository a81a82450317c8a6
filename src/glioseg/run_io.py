"""A training run folder: the one owner of its file names, columns and readers.

Training writes the folder (:class:`glioseg.training.run_folder.RunFolder`, append-only and
atomic); evaluation (curves, report), inference (release cards), experiments (plan, job, step
times) and the commands (demo) read it through :class:`RunFiles`, here on the ground floor, as
prediction reads checkpoints through :mod:`glioseg.checkpoint_io`. No other module spells a
file name or a column of the folder.

Files of ``RUN/``:

- ``config.yaml``, ``split.json``    the settings and the case split (written once, atomically);
- ``data.json``                      the identity of the data it trains on (``training.data_identity``);
- ``metrics.csv``                    a row per epoch (:data:`METRIC_COLUMNS`);
- ``steps.csv``                      a row per optimiser step (:data:`STEP_COLUMNS`);
- ``precision_events.jsonl``         one JSON object per precision decision;
- ``precision_summary.json``         written when the run finished (:meth:`RunFiles.finished`);
- ``last.pt``, ``best.pt``           checkpoints (``checkpoint_io``); ``tensorboard/``;
- ``training_curves.png``, ``report.html``  drawn when the run finished;
- ``step_times.csv``, ``budget_stop.json``, ``experiment_cost.json``  an experiment's measurements
  of the run (``experiments.measure``): seconds per step, where a minutes budget stopped it, cost.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glioseg.config import load_yaml
from glioseg.errors import InputError
from glioseg.files import read_json, write_text_atomic

CONFIG = "config.yaml"
SPLIT = "split.json"
DATA = "data.json"
METRICS = "metrics.csv"
STEPS = "steps.csv"
EVENTS = "precision_events.jsonl"
SUMMARY = "precision_summary.json"
LAST = "last.pt"
SNAPSHOTS = "snapshots"
BEST = "best.pt"
CURVES = "training_curves.png"
REPORT = "report.html"
TENSORBOARD = "tensorboard"
STEP_TIMES = "step_times.csv"
BUDGET_STOP = "budget_stop.json"
COST = "experiment_cost.json"

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_dice_wt", "val_dice_tc", "val_dice_et",
                  "val_dice_mean", "precision", "lr", "skipped", "seconds")
STEP_COLUMNS = ("step", "epoch", "loss", "precision", "grad_norm", "skipped", "lr")
STEP_TIME_COLUMNS = ("step", "seconds")
# What readers of metrics.csv get per epoch (a curve): numbers as float (NaN when blank), precision as text
CURVE_COLUMNS = ("epoch", "step", "train_loss", "val_dice_wt", "val_dice_tc", "val_dice_et", "precision", "seconds")


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _read_rows(path: Path, what: str) -> tuple[list[dict], list[str]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            return list(reader), list(reader.fieldnames or [])
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc}") from exc


@dataclass(frozen=True)
class RunFiles:
    """The files of the run folder ``path`` and what they say."""
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / CONFIG)
    split = property(lambda self: self.path / SPLIT)
    data = property(lambda self: self.path / DATA)
    metrics = property(lambda self: self.path / METRICS)
    steps = property(lambda self: self.path / STEPS)
    events = property(lambda self: self.path / EVENTS)
    summary = property(lambda self: self.path / SUMMARY)
    last = property(lambda self: self.path / LAST)
    best = property(lambda self: self.path / BEST)
    curves = property(lambda self: self.path / CURVES)
    report = property(lambda self: self.path / REPORT)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    step_times = property(lambda self: self.path / STEP_TIMES)
    budget_stop = property(lambda self: self.path / BUDGET_STOP)
    cost = property(lambda self: self.path / COST)

    def snapshot(self, step: int) -> Path:
        """The copy of the checkpoint kept at optimiser step ``step`` (``snapshot_every``)."""
        return self.path / SNAPSHOTS / f"step-{step:06d}.pt"

    def snapshots(self) -> dict[int, Path]:
        """Kept snapshots by step, in step order."""
        found = sorted((self.path / SNAPSHOTS).glob("step-*.pt"))
        return {int(p.stem.split("-")[1]): p for p in found if p.stem.split("-")[1].isdigit()}

    def checkpoint(self, which: str) -> Path:
        """``last`` or ``best`` → its path."""
        if which not in ("last", "best"):
            raise InputError(f"a run's checkpoint is 'last' or 'best', not {which!r}")
        return self.last if which == "last" else self.best

    # -- state ------------------------------------------------------------------------------
    def started(self) -> bool:
        """A checkpoint is there: ``--resume`` can continue the run."""
        return self.last.is_file()

    def finished(self) -> bool:
        """The trainer ran every epoch (its summary is written last)."""
        return self.summary.is_file()

    def budget_stopped(self) -> bool:
        """An experiment's minutes budget stopped the run (no further steps are wanted)."""
        return self.budget_stop.is_file()

    # -- readers ----------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        return load_yaml(self.config)

    def read_split(self) -> dict | None:
        """The run's split (train / val, and an experiment's held-out ``test``); None if absent."""
        return read_json(self.split, "the run's split") if self.split.is_file() else None

    def read_metrics(self) -> list[dict]:
        """``metrics.csv`` as curves: one dict per epoch with :data:`CURVE_COLUMNS` (numbers as
        float, NaN when blank; ``precision`` as text). A missing file is an :class:`InputError`
        (``glioseg report --run`` names a folder); callers that accept a run without epochs check
        ``metrics.is_file()`` first."""
        rows, columns = _read_rows(self.metrics, "the run's metrics")
        missing = [c for c in ("epoch", "train_loss") if c not in columns]
        if missing:
            raise InputError(f"{self.metrics}: not a training run's {METRICS}: lacks {missing}; found columns "
                             f"{columns}, expected {list(CURVE_COLUMNS)}")
        return [{k: (row.get(k) or "") if k == "precision" else _number(row.get(k)) for k in CURVE_COLUMNS}
                for row in rows]

    def read_steps(self) -> list[dict[str, str]]:
        """``steps.csv`` rows as written (text: an exact resume compares them character for character)."""
        return _read_rows(self.steps, "the run's step log")[0] if self.steps.is_file() else []

    def read_metric_rows(self) -> list[dict[str, str]]:
        """``metrics.csv`` rows as written (text), every column."""
        return _read_rows(self.metrics, "the run's metrics")[0] if self.metrics.is_file() else []

    def read_events(self) -> list[dict]:
        """``precision_events.jsonl`` (one JSON object a line: step, from, to, signal, value, ...); []
        if absent."""
        if not self.events.is_file():
            return []
        events = []
        for n, line in enumerate(self.events.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{self.events}: line {n} is not JSON: {exc}") from exc
        return events

    def read_summary(self) -> dict | None:
        """The precision summary of a finished run; None before it finished."""
        return read_json(self.summary, "the run's precision summary") if self.finished() else None

    def read_budget_stop(self) -> dict | None:
        return read_json(self.budget_stop, "a budget stop") if self.budget_stopped() else None

    def read_cost(self) -> dict | None:
        return read_json(self.cost, "a run's cost") if self.cost.is_file() else None

    def hours(self) -> float | None:
        """Training time: the per-epoch seconds of metrics.csv (resumed attempts included); None
        without metrics."""
        if not self.metrics.is_file():
            return None
        rows = self.read_metric_rows()
        return sum(float(row["seconds"]) for row in rows if row.get("seconds")) / 3600

    # -- step times (an experiment's measurement of each optimiser step) ----------------------
    def read_step_times(self) -> list[tuple[int, float]]:
        if not self.step_times.is_file():
            return []
        rows, _ = _read_rows(self.step_times, "the run's step times")
        return [(int(r["step"]), float(r["seconds"])) for r in rows]

    def keep_step_times_until(self, step: int) -> float:
        """Drop step times after ``step`` (a resumed run redoes those steps); the seconds kept."""
        rows = [(s, t) for s, t in self.read_step_times() if s <= step]
        write_text_atomic(self.step_times, ",".join(STEP_TIME_COLUMNS) + "\n" +
                          "".join(f"{s},{t:.6f}\n" for s, t in rows))
        return sum(t for _, t in rows)

    def append_step_time(self, step: int, seconds: float) -> None:
        with open(self.step_times, "a") as fh:
            fh.write(f"{step},{seconds:.6f}\n")
