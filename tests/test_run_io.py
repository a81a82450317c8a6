"""The run folder's owner (glioseg.run_io): what a folder says, read the same way by every floor."""
from __future__ import annotations

import json
import math

import pytest

from glioseg import run_io
from glioseg.errors import InputError
from glioseg.run_io import RunFiles


def test_state_follows_the_files_the_trainer_and_an_experiment_write(tmp_path):
    files = RunFiles(tmp_path)
    assert not (files.started() or files.finished() or files.budget_stopped())
    files.last.write_bytes(b"x")
    assert files.started() and not files.finished()
    files.summary.write_text(json.dumps({"policy": "fp32"}))
    assert files.finished() and files.read_summary() == {"policy": "fp32"}
    files.budget_stop.write_text(json.dumps({"step": 3}))
    assert files.budget_stopped() and files.read_budget_stop() == {"step": 3}
    assert files.checkpoint("best") == tmp_path / run_io.BEST
    with pytest.raises(InputError, match="'last' or 'best'"):
        files.checkpoint("final")


def test_metrics_as_curves_blank_is_nan_and_hours_sum_the_epochs(tmp_path):
    files = RunFiles(tmp_path)
    files.metrics.write_text("epoch,step,train_loss,val_dice_wt,precision,seconds\n1,2,0.5,,bf16,1800\n2,4,0.4,0.7,fp32,1800\n")
    curve = files.read_metrics()
    assert [tuple(c) for c in curve] == [run_io.CURVE_COLUMNS] * 2
    assert math.isnan(curve[0]["val_dice_wt"]) and curve[1]["val_dice_wt"] == 0.7
    assert math.isnan(curve[0]["val_dice_tc"])                # a column the file lacks
    assert curve[0]["precision"] == "bf16" and curve[1]["step"] == 4.0
    assert files.hours() == 1.0
    assert files.read_metric_rows()[0]["seconds"] == "1800"   # as written, text


def test_missing_or_foreign_metrics_and_bad_events_are_errors_naming_the_file(tmp_path):
    files = RunFiles(tmp_path)
    with pytest.raises(InputError, match=run_io.METRICS):
        files.read_metrics()
    assert files.hours() is None and files.read_steps() == [] and files.read_events() == []
    files.metrics.write_text("case,region,dice\n")
    with pytest.raises(InputError, match="not a training run"):
        files.read_metrics()
    files.events.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(InputError, match=f"{run_io.EVENTS}: line 2 is not JSON"):
        files.read_events()


def test_step_times_drop_the_steps_a_resume_redoes(tmp_path):
    files = RunFiles(tmp_path)
    assert files.keep_step_times_until(0) == 0.0
    for step, seconds in ((1, 0.5), (2, 0.25), (3, 1.0)):
        files.append_step_time(step, seconds)
    assert files.read_step_times() == [(1, 0.5), (2, 0.25), (3, 1.0)]
    assert files.keep_step_times_until(2) == 0.75
    files.append_step_time(3, 2.0)
    assert files.read_step_times() == [(1, 0.5), (2, 0.25), (3, 2.0)]
