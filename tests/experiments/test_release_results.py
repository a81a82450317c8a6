"""An arm's held-out scores become a released model's measured results: every case once, from the
fold model that did not train on it; refused while a fold is missing; readable by the model card;
``tools/release_results.py`` writes them whole or exits 2 and writes nothing."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from glioseg.errors import InputError
from glioseg.experiments.plan import make_plan, save_plan, saved_command
from glioseg.experiments.release_results import release_results
from glioseg.experiments.results import load_results
from glioseg.experiments.spec import load_spec
from glioseg.inference.model_card import read_results

from ._results import plan_result
from .conftest import TINY_SPEC

TOOL = Path(__file__).resolve().parents[2] / "tools" / "release_results.py"


def _finish(plan, run, dice: dict[str, float], steps: int | None = None) -> None:
    """A result file for ``run``: ``dice`` per held-out case in WT, TC = WT - 0.1, ET = WT - 0.2
    (HD95 5 mm); ``steps`` trained, where given."""
    held_out = [c for c, fold in plan.folds[run.seed].items() if fold == run.fold]
    rows = [{"case": c, "region": region, "dice": dice[c] - shift, "hd95": 5.0}
            for c in held_out for region, shift in (("WT", 0.0), ("TC", 0.1), ("ET", 0.2))]
    path = plan.result_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan_result(plan, run, rows, steps=steps or 0).write(path)


@pytest.fixture
def plan(write_spec, tmp_path):
    plan = make_plan(load_spec(write_spec()), "cpu", tmp_path / "exp")
    save_plan(plan, command="glioseg experiment run spec.yaml --out exp")
    return plan


def _dice(plan) -> dict[str, float]:
    return {case: 0.5 + 0.05 * i for i, case in enumerate(sorted(plan.strata))}


def test_every_case_is_scored_once_by_the_fold_that_held_it_out(plan):
    dice = _dice(plan)
    for run in plan.runs:
        _finish(plan, run, dice)
    out = release_results(load_results(plan), "small", "a test CPU", ("glioseg train ...",), hours=1.5)
    wt = out["dice"]["WT"]
    assert wt["per_case"] == pytest.approx(dice) and wt["n"] == len(plan.strata) == 6
    assert wt["mean"] == pytest.approx(np.mean(list(dice.values())))
    assert wt["sd"] == pytest.approx(np.std(list(dice.values()), ddof=1))
    assert out["dice"]["ET"]["mean"] == pytest.approx(wt["mean"] - 0.2)
    assert out["method"].startswith("2-fold cross-validation on the 6 cases of ")
    assert "arm 'small'" in out["method"] and "4 optimiser steps per fold model" in out["method"]
    assert out["commands"] == ["glioseg train ..."] and out["hours"] == 1.5
    assert saved_command(plan.out) == "glioseg experiment run spec.yaml --out exp"


def test_the_card_reads_the_results_and_the_notes_hold_the_study_table(plan, tmp_path):
    dice = _dice(plan)
    for run in plan.runs:
        if not (run.arm == "unet" and run.fold == 1):
            _finish(plan, run, dice)
    out = release_results(load_results(plan), "small", "a test CPU", notes="chosen on the mean")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(out))
    card = read_results(path)
    assert card.dice.TC.per_case == pytest.approx({c: v - 0.1 for c, v in dice.items()})
    table = card.notes.splitlines()
    assert any(line.startswith("| **small** (released) | 2 of 2 | ") for line in table)
    assert any(line.startswith("| unet | 1 of 2 | ") for line in table)
    assert table[-1] == "chosen on the mean"


def test_undefined_values_are_left_out_of_the_case_means(plan):
    dice = _dice(plan)
    first = sorted(dice)[0]
    dice[first] = math.nan
    for run in plan.runs:
        _finish(plan, run, dice)
    wt = release_results(load_results(plan), "small", "cpu")["dice"]["WT"]
    assert first not in wt["per_case"] and wt["n"] == 5


def test_the_method_gives_the_steps_the_fold_models_trained(plan):
    """A time budget stops runs at different steps: the recorded steps, not the schedule's length."""
    first, second = [r for r in plan.runs if r.arm == "small"]
    _finish(plan, first, _dice(plan), steps=3)
    _finish(plan, second, _dice(plan), steps=2)
    assert "(2-3 optimiser steps per fold model)" in release_results(load_results(plan), "small", "cpu")["method"]


def test_an_arm_with_a_fold_missing_or_no_such_arm_is_refused(plan):
    dice = _dice(plan)
    for run in plan.runs:
        if run.fold == 0:
            _finish(plan, run, dice)
    with pytest.raises(InputError, match=r"arm 'small' is not finished .*small/fold1-seed0"):
        release_results(load_results(plan), "small", "cpu")
    with pytest.raises(InputError, match=r"no arm 'big'; its arms: small, unet"):
        release_results(load_results(plan), "big", "cpu")


def _tool():
    spec = importlib.util.spec_from_file_location("release_results_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_writes_the_arms_results_with_the_experiments_commands(plan, tmp_path, caplog):
    dice, out = _dice(plan), tmp_path / "results.json"
    first, second = [r for r in plan.runs if r.arm == "small"]
    _finish(plan, first, dice)
    args = [str(plan.out), "--arm", "small", "--hardware", "test CPU", "--command", "glioseg train X", "--out", str(out)]
    assert _tool().main(args) == 2 and not out.exists()
    assert "is not finished" in caplog.text
    _finish(plan, second, dice)
    assert _tool().main(args) == 0
    data = json.loads(out.read_text())
    assert data["commands"] == ["glioseg experiment run spec.yaml --out exp",
                                f"glioseg experiment report {plan.out}", "glioseg train X"]
    assert data["hardware"] == "test CPU" and data["dice"]["WT"]["n"] == 6
    notes = tmp_path / "notes.md"
    notes.write_text("**Trained 10x longer.**\n")
    assert _tool().main(args + ["--notes", str(notes)]) == 0
    assert json.loads(out.read_text())["notes"].endswith("\n\n**Trained 10x longer.**\n")
    assert _tool().main(args + ["--notes", str(tmp_path / "missing.md")]) == 2
    assert "missing.md" in caplog.text


def test_a_one_arm_experiment_gives_median_and_the_fold_of_each_case_without_a_study_table(write_spec, tmp_path):
    """The release spec's shape: one arm "release", whose fold models become the released ensemble."""
    arm = {**TINY_SPEC["arms"][0], "name": "release"}
    plan = make_plan(load_spec(write_spec(arms=[arm], reference="release")), "cpu", tmp_path / "one")
    save_plan(plan, command="glioseg experiment run release.yaml --out one")
    dice = _dice(plan)
    for run in plan.runs:
        _finish(plan, run, dice)
    out = tmp_path / "results.json"
    assert _tool().main([str(plan.out), "--arm", "release", "--hardware", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dice"]["WT"]["median"] == pytest.approx(np.median(list(dice.values())))
    assert data["held_out_by"] == {case: f"fold{fold}" for case, fold in plan.folds[0].items()}
    assert data["notes"] == "" and "Recipe study" not in out.read_text()
    card = read_results(out)
    assert card.held_out_by == data["held_out_by"] and card.dice.ET.median == pytest.approx(data["dice"]["ET"]["median"])
