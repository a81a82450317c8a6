"""Plans: precision levels the probe rules out are reported as not run; run folders and status."""
from __future__ import annotations

import copy

import pytest

from glioseg.cli import main
from glioseg.experiments import resolve as resolve_module
from glioseg.experiments.plan import make_plan
from glioseg.experiments.spec import SpecError, load_spec
from glioseg import precisions
from glioseg.precisions import describe_device

from .conftest import TINY_SPEC


def _precision_arms(*levels):
    arms = []
    for level in levels:
        arm = copy.deepcopy(TINY_SPEC["arms"][0])
        arm["name"] = level
        arm["overrides"] = {**arm["overrides"], "precision": level}
        arms.append(arm)
    return arms


def test_a_level_the_probe_rules_out_is_not_run_and_says_why(write_spec, tmp_path, monkeypatch, capsys):
    # the verdict depends on the CPU; here the device autocasts in all three and computes bf16 natively
    monkeypatch.setattr(resolve_module, "supported_precisions", lambda device: ("fp32", "bf16", "fp16"))
    monkeypatch.setattr(precisions, "native_precisions", lambda device: ("fp32", "bf16"))
    spec = write_spec(arms=_precision_arms("fp32", "bf16", "fp16"), reference="fp32")
    plan = make_plan(load_spec(spec), "cpu", tmp_path / "out")
    assert plan.not_run == {"fp16": f"fp16 is not native on {describe_device('cpu')} (auto would not use it): not run"}
    assert {plan.status(r) for r in plan.runs if r.arm == "fp16"} == {"not run"}
    assert {plan.status(r) for r in plan.runs if r.arm != "fp16"} == {"pending"}
    assert main(["experiment", "run", str(spec), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "arm fp16: segresnet" in (out := capsys.readouterr().out) and "NOT RUN: fp16 is not native on" in out


def test_an_unsupported_level_is_not_run(write_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(resolve_module, "supported_precisions", lambda device: ("fp32",))
    spec = write_spec(arms=_precision_arms("fp32", "bf16"), reference="fp32")
    plan = make_plan(load_spec(spec), "cpu", tmp_path / "out")
    assert plan.not_run == {"bf16": "bf16 autocast is not supported on cpu"}


def test_runs_are_one_folder_per_arm_fold_and_seed(write_spec, tmp_path):
    plan = make_plan(load_spec(write_spec(seeds=[0, 3])), "cpu", tmp_path / "out")
    assert [r.key for r in plan.runs] == ["small/fold0-seed0", "small/fold1-seed0", "small/fold0-seed3",
                                          "small/fold1-seed3", "unet/fold0-seed0", "unet/fold1-seed0",
                                          "unet/fold0-seed3", "unet/fold1-seed3"]
    assert plan.run_dir(plan.runs[2]) == tmp_path / "out" / "runs" / "small" / "fold0-seed3"
    assert plan.result_path(plan.runs[2]) == tmp_path / "out" / "results" / "small" / "fold0-seed3.json"
    for seed in (0, 3):
        tests = [c for r in plan.runs if r.arm == "small" and r.seed == seed for c in plan.split(r)["test"]]
        assert sorted(tests) == sorted(plan.strata)          # every case held out once per seed
    # the same split for every arm: arms differ only in what they name
    assert plan.split(plan.runs[0]) == plan.split(plan.runs[4])
    assert plan.resolved.config("unet", 3).seed == 3


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_positive(write_spec, tmp_path, jobs, caplog):
    assert main(["experiment", "run", str(write_spec()), "--out", str(tmp_path / "x"), "--jobs", jobs]) == 2
    assert "--jobs must be at least 1" in caplog.text


def test_grades_given_in_the_spec_stratify_the_folds(write_spec, tmp_path):
    plain = make_plan(load_spec(write_spec()), "cpu", tmp_path / "plain")
    grades = {case: ("LGG" if i % 2 else "HGG") for i, case in enumerate(sorted(plain.strata))}
    graded = make_plan(load_spec(write_spec(name="graded.yaml", folds={"k": 2, "seed": 0, "grades": grades})),
                       "cpu", tmp_path / "graded")
    assert {c: s.split("/")[1] for c, s in graded.strata.items()} == grades
    assert {s.split("/")[1] for s in plain.strata.values()} == {"?"}


def test_an_arm_on_fewer_training_cases_is_checked_planned_and_shown(write_spec, tmp_path, capsys):
    arms = copy.deepcopy(TINY_SPEC["arms"])
    arms[1] = {**arms[0], "name": "small-2", "train_cases": 2}
    plan = make_plan(load_spec(write_spec(arms=arms)), "cpu", tmp_path / "out")
    assert plan.resolved.differences() == {"train_cases": {"small": "all", "small-2": 2}}
    run = next(r for r in plan.runs if r.arm == "small-2")
    split, full = plan.split(run), plan.split(next(r for r in plan.runs if r.arm == "small" and r.fold == run.fold))
    assert len(split["train"] + split["val"]) == 2 and split["test"] == full["test"]
    assert main(["experiment", "run", str(write_spec(arms=arms)), "--out", str(tmp_path / "x"), "--dry-run"]) == 0
    assert "2 training cases per fold" in capsys.readouterr().out
    arms[1]["train_cases"] = 4          # 6 phantom cases in 2 folds: 3 training cases a fold
    with pytest.raises(SpecError, match="arm .small-2.: train_cases 4 is more than the 3 training cases"):
        make_plan(load_spec(write_spec(arms=arms)), "cpu", tmp_path / "out")
    arms[1]["train_cases"] = 0
    with pytest.raises(SpecError, match="train_cases must be a positive whole number, got 0"):
        load_spec(write_spec(arms=arms))
