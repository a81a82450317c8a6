"""Specs building on specs: ``extends`` replaces top-level keys, ``like`` copies an arm, and the
shipped studies that use them resolve to exactly the runs they say they share."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from glioseg.errors import GliosegError
from glioseg.experiments.resolve import resolve
from glioseg.experiments.spec import load_spec

from .conftest import TINY_SPEC


def _write(folder, name, body):
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_extends_replaces_keys_and_like_merges_an_arms_settings(tmp_path, phantom_data):
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "parent.yaml", {**TINY_SPEC, "data": str(phantom_data)})
    child = _write(tmp_path / "sub", "child.yaml", {
        "extends": "../parent.yaml", "name": "child", "reference": "small",
        "arms": [{"name": "small", "like": "small"},
                 {"name": "small-lr", "like": "small", "overrides": {"lr": 0.01}, "train_cases": 2},
                 {"name": "again", "like": "small-lr", "model_options": {"init_filters": 16}}]})
    spec, parent = load_spec(child), load_spec(tmp_path / "parent.yaml")
    assert (spec.name, spec.folds, spec.budgets, spec.evaluation) == ("child", parent.folds, parent.budgets,
                                                                      parent.evaluation)
    assert spec.data_path().resolve() == phantom_data.resolve() and spec.description == parent.description
    assert spec.arm("small") == dataclasses.replace(parent.arm("small"), description="")
    lr = spec.arm("small-lr")
    assert lr.overrides == {**parent.arm("small").overrides, "lr": 0.01} and lr.train_cases == 2
    assert spec.arm("again").model_options == {"init_filters": 16} and spec.arm("again").overrides == lr.overrides


def test_a_relative_data_path_is_the_parents_own(tmp_path, phantom_data):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _write(tmp_path / "a", "parent.yaml", {**TINY_SPEC, "data": "../data"})
    child = _write(tmp_path / "b", "child.yaml", {"extends": "../a/parent.yaml", "name": "child"})
    assert load_spec(child).data_path() == (tmp_path / "data").resolve()


@pytest.mark.parametrize("body, message", [
    ({"extends": "missing.yaml"}, "no such spec file, and not a shipped spec"),
    ({"extends": "self.yaml"}, "makes a cycle"),
    ({"extends": 3}, "extends must name a spec"),
    ({"arms": [{"name": "x", "like": "nowhere"}]}, "arm 'x' is like 'nowhere', which is not an arm before it"),
])
def test_bad_inheritance_names_the_spec_and_the_problem(tmp_path, phantom_data, body, message):
    spec = _write(tmp_path, "self.yaml", {**TINY_SPEC, "data": str(phantom_data), **body})
    with pytest.raises(GliosegError, match=message):
        load_spec(spec)


def test_a_cycle_through_another_spelling_of_the_path_is_found(tmp_path, phantom_data):
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "a.yaml", {**TINY_SPEC, "data": str(phantom_data), "extends": "sub/../b.yaml"})
    _write(tmp_path, "b.yaml", {"extends": "./a.yaml"})
    with pytest.raises(GliosegError, match="makes a cycle"):
        load_spec(tmp_path / "a.yaml")


def test_the_shipped_case_curve_shares_the_released_arm_and_differs_only_in_cases():
    cases, augment = resolve(load_spec("segresnet-cases"), "cpu"), resolve(load_spec("segresnet-augment"), "cpu")
    assert cases.config("nnunet-aug", 0) == augment.config("nnunet-aug", 0)
    assert (cases.spec.data, cases.spec.folds, cases.spec.budgets) == (augment.spec.data, augment.spec.folds,
                                                                      augment.spec.budgets)
    assert {a.name: a.train_cases for a in cases.spec.arms} == {"nnunet-aug": None, "cases-12": 12, "cases-6": 6}
    assert cases.config("cases-6", 0) == cases.config("nnunet-aug", 0)


def test_the_shipped_deep_supervision_study_changes_only_that():
    deep, augment = resolve(load_spec("segresnet-deep"), "cpu"), resolve(load_spec("segresnet-augment"), "cpu")
    assert deep.config("nnunet-aug", 0) == augment.config("nnunet-aug", 0)
    assert deep.differences() == {"model_options": {"nnunet-aug": {"deep_supervision": None},
                                                    "deep-sup": {"deep_supervision": 2}}}


def test_the_shipped_long_schedule_is_the_released_arm_at_twice_the_steps():
    """Its reference lives in segresnet-augment (a budget is shared by an experiment's arms): the
    arm must be that experiment's nnunet-aug with nothing changed but the length."""
    long, augment = resolve(load_spec("segresnet-long"), "cpu"), resolve(load_spec("segresnet-augment"), "cpu")
    assert (long.spec.data, long.spec.folds, long.spec.seeds) == (augment.spec.data, augment.spec.folds, augment.spec.seeds)
    ours, theirs = long.config("nnunet-aug", 0), augment.config("nnunet-aug", 0)
    assert ours.epochs * ours.steps_per_epoch == 4000 and theirs.epochs * theirs.steps_per_epoch == 2000
    assert dataclasses.replace(ours, epochs=theirs.epochs) == theirs


def test_the_shipped_foreground_study_changes_only_the_share():
    study, augment = resolve(load_spec("segresnet-foreground"), "cpu"), resolve(load_spec("segresnet-augment"), "cpu")
    assert study.config("nnunet-aug", 0) == augment.config("nnunet-aug", 0)
    assert study.differences() == {"foreground_fraction": {"nnunet-aug": 0.67, "fg-0.33": 0.33}}
