"""The experiment's records: specs, jobs and results check themselves; an arm without a recipe
trains with its model's; committed experiment folders read and resolve as they were run; a
finished run whose settings would now resolve differently is named, never silently mixed in."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import pytest

from glioseg.config import to_dict
from glioseg.errors import InputError
from glioseg.experiments.plan import added_arms, load_plan, make_plan, save_plan
from glioseg.experiments.records import RunResult
from glioseg.experiments.resolve import resolve
from glioseg.experiments.results import arm_scores, cost, load_results
from glioseg.experiments.runner import prepare
from glioseg.experiments.spec import BudgetSpec, EvaluationSpec, SpecError, load_spec, spec_from_dict
from glioseg.training.recipe import default_recipe

from .conftest import TINY_SPEC
from ._results import plan_result

COMMITTED = sorted((Path(__file__).resolve().parents[2] / "docs" / "results" / "experiments").iterdir())


@pytest.mark.parametrize("fields, message", [
    ({"steps": 4, "epochs": 2}, "exactly one of steps, epochs, minutes"),
    ({"minutes": -1.0}, "minutes must be positive"),
    ({"steps": 5, "steps_per_epoch": 2}, "not a whole number of epochs"),
])
def test_a_budget_checks_itself_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        BudgetSpec(**fields)


def test_an_evaluation_checks_itself_and_names_every_problem():
    with pytest.raises(ValueError, match="window must be one of.*; evaluation.checkpoint must be one of"):
        EvaluationSpec(window="cube", checkpoint="final")


def test_a_bad_budget_fails_when_the_spec_is_read_naming_it():
    raw = {**copy.deepcopy(TINY_SPEC), "data": ".", "budgets": {"cpu": {"steps": 0}}}
    with pytest.raises(SpecError, match="spec.yaml: budget 'cpu': needs exactly one|steps must be positive"):
        spec_from_dict(raw, "spec.yaml", ".")


def test_an_arm_without_a_recipe_trains_with_its_model_s_recipe_as_glioseg_train_does():
    arms = [{"name": "a", "model": "segresnet", "model_options": {"init_filters": 8}},
            {"name": "b", "model": "unet3d", "model_options": {"base_width": 4}}]
    spec = spec_from_dict({**copy.deepcopy(TINY_SPEC), "data": ".", "arms": arms, "reference": "a"}, "s", ".")
    assert [a.recipe for a in spec.arms] == [default_recipe("segresnet"), default_recipe("unet3d")] == \
        ["segresnet-brats", "dalight3d-paper"]
    configs = resolve(spec, "cpu").configs
    assert configs["a"].loss != configs["b"].loss or configs["a"].lr != configs["b"].lr   # two recipes


@pytest.mark.parametrize("folder", COMMITTED, ids=[f.name for f in COMMITTED])
def test_committed_experiments_read_and_resolve_as_they_were_run(folder, caplog):
    with caplog.at_level(logging.WARNING):
        results = load_results(load_plan(folder))
    assert len(results.runs) == len(list(folder.glob("results/*/*.json"))) > 0
    assert results.resolved_otherwise() == {} and "differently" not in caplog.text
    assert {r["arm"] for r in arm_scores(results)} == set(results.arms())
    assert [row["runs"] for row in cost(results)] == [len(results.of_arm(a)) for a in results.plan.resolved.arm_names]


def test_a_result_file_checks_itself_naming_the_file(tmp_path):
    source = next(COMMITTED[0].glob("results/*/*.json"))
    data = json.loads(source.read_text())
    result = RunResult.read(source)
    written = json.loads(json.dumps(to_dict(result)))
    # a cost field recorded only since (cpus, session 17) reads as None from an older file
    added = {k for k, v in written["cost"].items() if v is None and k not in data["cost"]}
    assert added <= {"cpus"}
    assert {**written, "cost": {k: v for k, v in written["cost"].items() if k not in added}} == data   # the file's keys
    data["rows"] = data["rows"][1:] + [{**data["rows"][0], "case": "somebody-else"}]
    bad = tmp_path / "fold0-seed0.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not the held-out cases"):
        RunResult.read(bad)
    bad.write_text(json.dumps({**json.loads(source.read_text()), "colour": 1}))
    with pytest.raises(InputError, match=f"{bad}: unknown key"):
        RunResult.read(bad)


@pytest.fixture
def finished(write_spec, tmp_path):
    """A saved plan whose first run has a result trained at another learning rate than the spec gives."""
    plan = make_plan(load_spec(write_spec()), "cpu", tmp_path / "exp")
    save_plan(plan)
    run = plan.runs[0]
    trained = plan_result(plan, run)
    trained = dataclasses.replace(trained, config={**trained.config, "lr": trained.config["lr"] * 10})
    plan.result_path(run).parent.mkdir(parents=True)
    trained.write(plan.result_path(run))
    return plan, run


def test_a_run_trained_with_settings_the_spec_no_longer_gives_is_named(finished, caplog):
    plan, run = finished
    with caplog.at_level(logging.WARNING):
        results = load_results(plan)
    assert list(results.resolved_otherwise()) == [run.key] and set(results.resolved_otherwise()[run.key]) == {"lr"}
    assert f"{run.key} (lr" in caplog.text and "reported as trained" in caplog.text
    with pytest.raises(SpecError, match=f"1 finished runs were trained with settings .*{run.key} \\(lr"):
        prepare(plan)


def test_a_saved_experiment_may_gain_arms_but_not_lose_or_change_them():
    arm = lambda name, lr: {"name": name, "model": "segresnet", "overrides": {"lr": lr}, "description": name}  # noqa: E731
    saved = {"spec": {"name": "s", "arms": [arm("a", 1), arm("b", 2)], "description": "two"},
             "budget": "cpu", "folds": {"0": {"x": 0}}}
    grown = {**saved, "spec": {**saved["spec"], "arms": [arm("a", 1), arm("b", 2), arm("c", 3)],
                                "description": "three"}}
    assert added_arms(saved, grown) == ["c"]
    assert added_arms(saved, saved) == []
    with pytest.raises(ValueError, match=r"arm\(s\) b \(changed or removed\)"):
        added_arms(saved, {**saved, "spec": {**saved["spec"], "arms": [arm("a", 1)]}})
    with pytest.raises(ValueError, match=r"arm\(s\) a \(changed or removed\)"):
        added_arms(saved, {**saved, "spec": {**saved["spec"], "arms": [arm("a", 5), arm("b", 2)]}})
    with pytest.raises(ValueError, match="^budget$"):
        added_arms(saved, {**grown, "budget": "paper"})
    with pytest.raises(ValueError, match="^spec$"):
        added_arms(saved, {**saved, "spec": {**saved["spec"], "name": "t"}})
