"""TensorBoard logs: the run's rows as scalars where tensorboard is installed, nothing where it is not."""
from __future__ import annotations

import math
import sys

import pytest

from glioseg.training.tensorboard import TensorBoardLog, scalars, summary_writer_class
from glioseg.run_io import RunFiles

from ._runs import run_inprocess, train_args, write_config


class FakeWriter:
    """Records what a ``SummaryWriter`` is asked to write."""

    made: list["FakeWriter"] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars, self.texts, self.closed = [], [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake():
    FakeWriter.made = []
    return FakeWriter


def test_steps_epochs_and_events_become_scalars_and_text(fake, tmp_path):
    board = TensorBoardLog(tmp_path / "tb", writer_class=fake)
    board.log_step({"step": 3, "loss": 0.5, "grad_norm": 2.0, "lr": 1e-4, "skipped": 0, "precision": "bf16"})
    board.log_epoch({"epoch": 1, "step": 3, "train_loss": 0.6, "val_dice_wt": 0.8, "val_dice_tc": float("nan"),
                     "seconds": 12.5})
    board.log_event({"step": 3, "from": "fp32", "to": "bf16", "signal": "calm", "reason": "signals calm"})
    board.close()
    (writer,) = fake.made
    assert writer.log_dir == str(tmp_path / "tb") and writer.purge_step is None and writer.closed
    assert writer.scalars == [("train/loss", 0.5, 3), ("train/grad_norm", 2.0, 3), ("train/lr", 1e-4, 3),
                              ("train/skipped", 0.0, 3), ("precision/bits", 16, 3),
                              ("epoch/train_loss", 0.6, 3), ("val/dice_wt", 0.8, 3), ("epoch/seconds", 12.5, 3)]
    assert writer.texts == [("precision/events", "fp32 → bf16 (calm): signals calm", 3)]


def test_resumed_run_purges_what_came_after_the_checkpoint(fake, tmp_path):
    board = TensorBoardLog(tmp_path, writer_class=fake)
    board.resume_at(40)
    board.log_step({"step": 41, "loss": 0.1, "precision": "fp32"})
    assert fake.made[0].purge_step == 40


def test_scalars_drop_missing_nan_and_non_numeric_values():
    row = {"loss": "", "grad_norm": float("inf"), "lr": 0.5, "skipped": True}
    assert scalars(row, {"loss": "a", "grad_norm": "b", "lr": "c", "skipped": "d", "absent": "e"}) == {"c": 0.5}


def test_without_tensorboard_nothing_is_written(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import now raises ImportError
    assert summary_writer_class() is None
    board = TensorBoardLog(tmp_path / "tb")
    board.log_step({"step": 1, "loss": 0.5})
    board.log_epoch({"step": 1, "train_loss": 0.5})
    board.close()
    assert not board.enabled and not (tmp_path / "tb").exists()


@pytest.mark.usefixtures("one_thread")
def test_training_run_writes_its_losses_to_tensorboard(phantom_cache, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert run_inprocess(train_args(phantom_cache, run, write_config(tmp_path, epochs=1, steps_per_epoch=3))) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    expected = [(int(r["step"]), float(r["loss"])) for r in RunFiles(run).read_steps()]
    assert [s for s, _ in losses] == [s for s, _ in expected] == [1, 2, 3]
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(losses, expected))
    (wt,) = events.Scalars("val/dice_wt")
    assert wt.step == 3 and 0.0 <= wt.value <= 1.0
    assert [e.value for e in events.Scalars("precision/bits")] == [32, 32, 32]
