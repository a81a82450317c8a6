"""Trainer callbacks: the events of a run in order, step times, a stop that checkpoints and can be
resumed, and logs that do not depend on what watched the run."""
from __future__ import annotations

from pathlib import Path

import pytest

from glioseg.checkpoint_io import load_checkpoint
from glioseg.training.callbacks import Callback, RunStopped, StopAfterSteps
from glioseg.training.settings import train_config
from glioseg.training.trainer import train
from glioseg.run_io import RunFiles

from ._runs import run_inprocess, train_args, without, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callback):
    """Every event as (hook, step, epoch) and what the hook was given."""

    def __init__(self):
        self.events, self.steps, self.epochs, self.ends = [], [], [], []

    def on_train_start(self, trainer):
        self.events.append(("train_start", trainer.step, trainer.epoch))

    def on_epoch_start(self, trainer):
        self.events.append(("epoch_start", trainer.step, trainer.epoch))

    def on_step_end(self, trainer, step):
        self.events.append(("step_end", trainer.step, trainer.epoch))
        self.steps.append(step)

    def on_epoch_end(self, trainer, epoch):
        self.events.append(("epoch_end", trainer.step, trainer.epoch))
        self.epochs.append(epoch)

    def on_train_end(self, trainer, end):
        self.events.append(("train_end", trainer.step, trainer.epoch))
        self.ends.append(end)


def _train(data: Path, out: Path, config: Path, callbacks, resume: bool = False) -> dict:
    return train(train_config(out, {}, None, config, resume), data, out, resume=resume, callbacks=callbacks)


def test_hooks_fire_in_order_with_the_step_and_epoch_they_describe(phantom_cache, tmp_path):
    config = write_config(tmp_path, epochs=2, steps_per_epoch=2)
    recorder = Recorder()
    summary = _train(phantom_cache, tmp_path / "run", config, [recorder])
    assert recorder.events == [
        ("train_start", 0, 0),
        ("epoch_start", 0, 0), ("step_end", 1, 0), ("step_end", 2, 0), ("epoch_end", 2, 1),
        ("epoch_start", 2, 1), ("step_end", 3, 1), ("step_end", 4, 1), ("epoch_end", 4, 2),
        ("train_end", 4, 2)]
    steps = RunFiles(tmp_path / "run").read_steps()
    assert [s.step for s in recorder.steps] == [1, 2, 3, 4]
    assert [f"{s.loss}" for s in recorder.steps] == [r["loss"] for r in steps]
    assert all(s.seconds > 0 and s.ended > s.started for s in recorder.steps)
    assert [e.epoch for e in recorder.epochs] == [1, 2]
    assert all(0 < e.loop_seconds <= e.row["seconds"] for e in recorder.epochs)
    assert recorder.ends[0].stopped is None and recorder.ends[0].summary == summary
    # the end hook runs after the run folder got its summary
    assert RunFiles(tmp_path / "run").summary.is_file()


def test_a_stop_checkpoints_that_step_and_the_resumed_run_is_the_uninterrupted_one(phantom_cache, tmp_path):
    config = write_config(tmp_path, epochs=2, steps_per_epoch=2)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_inprocess(train_args(phantom_cache, whole, config)) == 0
    recorder = Recorder()
    with pytest.raises(RunStopped) as stopped:
        _train(phantom_cache, part, config, [StopAfterSteps(3, "enough"), recorder])
    assert (stopped.value.reason, stopped.value.step) == ("enough", 3)
    # every callback's hooks of the step ran before the stop; then the end, with the reason
    assert recorder.events[-2:] == [("step_end", 3, 1), ("train_end", 3, 1)]
    assert recorder.ends[0].stopped == "enough"
    assert load_checkpoint(RunFiles(part).last)["progress"]["step"] == 3
    assert not RunFiles(part).summary.exists()
    _train(phantom_cache, part, config, [], resume=True)
    assert RunFiles(part).read_steps() == RunFiles(whole).read_steps()
    assert without(RunFiles(part).read_metric_rows(), "seconds") == without(RunFiles(whole).read_metric_rows(), "seconds")


def test_snapshots_keep_the_checkpoint_of_each_marked_step(phantom_cache, tmp_path):
    # epochs of 2 steps, a snapshot every 3 steps: the epochs ending at steps 4 and 6 reach marks 3
    # and 6; the copies are the weights at those steps (the last one equals last.pt)
    config = write_config(tmp_path, epochs=3, steps_per_epoch=2, snapshot_every=3)
    _train(phantom_cache, tmp_path / "run", config, [])
    files = RunFiles(tmp_path / "run")
    kept = files.snapshots()
    assert list(kept) == [4, 6]
    assert load_checkpoint(kept[4])["progress"]["step"] == 4
    last, six = load_checkpoint(files.last), load_checkpoint(kept[6])
    assert all((last["model"][k] == six["model"][k]).all() for k in last["model"])


def test_snapshot_every_must_not_be_negative(tmp_path):
    from glioseg.errors import InputError
    from glioseg.training.recipe import TrainConfig
    with pytest.raises(InputError, match="snapshot_every"):
        TrainConfig(snapshot_every=-1)
