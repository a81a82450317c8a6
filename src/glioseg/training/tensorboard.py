"""TensorBoard scalars of a training run, written only where the ``tensorboard`` package is installed.

The CSV / JSONL logs of :class:`glioseg.training.run_folder.RunFolder` are the record of a run;
TensorBoard is a live view of the same rows in ``RUN/tensorboard/``:

- per step: ``train/loss``, ``train/grad_norm``, ``train/lr``, ``train/skipped`` and
  ``precision/bits`` (32 for fp32, 16 for bf16 and fp16);
- per epoch: ``epoch/train_loss``, ``val/dice_wt``, ``val/dice_tc``, ``val/dice_et``,
  ``val/dice_mean``, ``epoch/seconds``, at the step the epoch ended;
- every precision-controller decision as text under ``precision/events``.

A resumed run opens the writer with ``purge_step`` at the checkpoint's step, so TensorBoard drops
what the killed run logged after the checkpoint, as ``RunFolder.truncate_after`` does for the CSVs.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BITS = {"fp32": 32, "bf16": 16, "fp16": 16}
STEP_SCALARS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/lr", "skipped": "train/skipped"}
EPOCH_SCALARS = {"train_loss": "epoch/train_loss", "val_dice_wt": "val/dice_wt", "val_dice_tc": "val/dice_tc",
                 "val_dice_et": "val/dice_et", "val_dice_mean": "val/dice_mean", "seconds": "epoch/seconds"}


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or None where the tensorboard package is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # torch raises it when the tensorboard package is not installed
        return None
    return SummaryWriter


def scalars(row: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    """The finite numeric values of ``row`` under their TensorBoard tags (empty CSV cells and NaN dropped)."""
    out = {}
    for key, tag in names.items():
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)
    return out


class TensorBoardLog:
    """A ``SummaryWriter`` on ``folder`` opened at the first row, or nothing at all without tensorboard."""

    def __init__(self, folder: Path, writer_class=None):
        self.folder = Path(folder)
        self._class = writer_class if writer_class is not None else summary_writer_class()
        self._writer = None
        self._purge_step: int | None = None
        if self._class is None:
            log.debug("tensorboard is not installed: no TensorBoard logs (the CSV logs are complete)")

    @property
    def enabled(self) -> bool:
        return self._class is not None

    def resume_at(self, step: int) -> None:
        """Drop, in TensorBoard's view, what an earlier process logged after ``step``."""
        self._purge_step = step

    def _open(self):
        if self._writer is None and self._class is not None:
            self._writer = self._class(log_dir=str(self.folder), purge_step=self._purge_step)
        return self._writer

    def log_step(self, row: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None:
            return
        step = int(row["step"])
        for tag, value in scalars(row, STEP_SCALARS).items():
            writer.add_scalar(tag, value, step)
        if row.get("precision") in BITS:
            writer.add_scalar("precision/bits", BITS[row["precision"]], step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None:
            return
        for tag, value in scalars(row, EPOCH_SCALARS).items():
            writer.add_scalar(tag, value, int(row["step"]))
        writer.flush()

    def log_event(self, event: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None:
            return
        text = f"{event.get('from')} → {event.get('to')} ({event.get('signal')}): {event.get('reason')}"
        writer.add_text("precision/events", text, int(event.get("step", 0)))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
