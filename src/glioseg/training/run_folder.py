"""Writing the files of a training run, so that a kill at any moment loses nothing.

Names and columns are :mod:`glioseg.run_io`'s (its :class:`~glioseg.run_io.RunFiles` reads them):
the settings and split are written once (atomically); a row per epoch and per optimiser step;
one JSON object per controller decision. On resume, rows past the checkpoint being resumed are
dropped, so the files always describe one consistent run. TensorBoard gets the same rows as
scalars where the tensorboard package is installed.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import yaml

from glioseg.evaluation.figures import training_curves
from glioseg.evaluation.report import write_report
from glioseg.files import atomic_path, write_text_atomic
from glioseg.run_io import METRIC_COLUMNS, STEP_COLUMNS, RunFiles
from glioseg.training.tensorboard import TensorBoardLog


class RunFolder:
    """Paths and append-only logs of one run; only rank 0 writes."""

    def __init__(self, path: Path, writer: bool = True):
        self.path = Path(path)
        self.files = RunFiles(self.path)
        self.writer = writer
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
        self.board = TensorBoardLog(self.files.tensorboard) if writer else None

    last = property(lambda self: self.files.last)
    best = property(lambda self: self.files.best)
    metrics = property(lambda self: self.files.metrics)
    steps = property(lambda self: self.files.steps)
    events = property(lambda self: self.files.events)

    def write_config(self, config: dict[str, Any], split: dict[str, Any]) -> None:
        if self.writer:
            write_text_atomic(self.files.config, yaml.safe_dump(config, sort_keys=False))
            write_text_atomic(self.files.split, json.dumps(split, indent=2))

    def _append(self, path: Path, columns: tuple[str, ...], row: dict[str, Any]) -> None:
        if not self.writer:
            return
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            if new:
                out.writeheader()
            out.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._append(self.metrics, METRIC_COLUMNS, row)
        if self.board is not None:
            self.board.log_epoch(row)

    def log_step(self, row: dict[str, Any]) -> None:
        self._append(self.steps, STEP_COLUMNS, row)
        if self.board is not None:
            self.board.log_step(row)

    def log_event(self, event: dict[str, Any]) -> None:
        if self.writer:
            with open(self.events, "a") as fh:
                fh.write(json.dumps(event) + "\n")
            self.board.log_event(event)

    def truncate_after(self, step: int, epochs_done: int) -> None:
        """Drop log rows of steps after ``step`` and of epochs after the first ``epochs_done``
        (what a resumed run will redo).

        Epoch rows go by epoch, not by step: a checkpoint taken at an epoch's last step, before
        its validation and its epoch-end checkpoint, has that epoch's step count but not the
        epoch done, and the resumed run writes that epoch's row again.
        """
        if not self.writer:
            return
        self.board.resume_at(step)
        for path, key, last in ((self.metrics, "epoch", epochs_done), (self.steps, "step", step)):
            if path.exists():
                with open(path, newline="") as fh:
                    rows = list(csv.DictReader(fh))
                kept = [r for r in rows if int(r[key]) <= last]
                columns = METRIC_COLUMNS if path == self.metrics else STEP_COLUMNS
                with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
                    out = csv.DictWriter(fh, fieldnames=columns)
                    out.writeheader()
                    out.writerows(kept)
        if self.events.exists():
            lines = [ln for ln in self.events.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= step]
            write_text_atomic(self.events, "".join(ln + "\n" for ln in lines))

    def clear_logs(self) -> None:
        """Drop the logs of an earlier run that died before its first checkpoint (a new run
        starts there; appending would mix the two runs' rows)."""
        if self.writer:
            for path in (self.metrics, self.steps, self.events):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV / JSONL logs are flushed at every row)."""
        if self.board is not None:
            self.board.close()

    def finish(self, summary: dict[str, Any]) -> None:
        """Precision summary (JSON), loss/Dice/precision curves (PNG) and the run's HTML report."""
        if not self.writer:
            return
        write_text_atomic(self.files.summary, json.dumps(summary, indent=2))   # the report shows it
        with atomic_path(self.files.curves) as tmp:
            tmp.write_bytes(training_curves(self.path))
        write_report(self.files.report, run_dir=self.path, title=f"glioseg training run {self.path.name}")
