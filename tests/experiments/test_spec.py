"""Specs: unknown keys and impossible experiments are clear errors before anything trains."""
from __future__ import annotations

import copy
import dataclasses
import logging
import re

import pytest
import torch

from glioseg.cli import main
from glioseg.experiments.resolve import resolve
from glioseg.experiments.spec import load_spec, shipped_names

from .conftest import TINY_SPEC


def _arms(**changes_of_second):
    arms = copy.deepcopy(TINY_SPEC["arms"])
    arms[1].update(changes_of_second)
    return arms


def _budget(**budget):
    return {"cpu": {"steps_per_epoch": 2, "device": "cpu", **budget}}


BAD = {
    "unknown top-level key": ({"colour": "red"}, r"unknown key\(s\) colour"),
    "unknown arm key": ({"arms": _arms(optimiser="sgd")}, r"unknown key\(s\) optimiser"),
    "unknown model": ({"arms": _arms(model="dalight4d")}, "arm 'unet'.*unknown model 'dalight4d'"),
    "unknown model option": ({"arms": _arms(model_options={"width": 3})}, "options: unknown key.*width"),
    "unknown recipe": ({"arms": _arms(recipe="nnunet")}, "unknown recipe 'nnunet'"),
    "bad override value": ({"arms": _arms(overrides={"patch": [4, 4, 4]})}, "patch must be three sizes"),
    "patch the network cannot take": ({"arms": _arms(overrides={"patch": [20, 20, 20]})},
                                      "patch 20x20x20: .* multiples of 8"),
    "unknown override": ({"arms": _arms(overrides={"learning_rate": 1})}, "unknown key.*learning_rate"),
    "override of a shared setting": ({"arms": _arms(overrides={"seed": 3})}, "may not set seed"),
    "zero budget": ({"budgets": _budget(steps=0)}, "steps must be positive"),
    "negative minutes": ({"budgets": _budget(minutes=-1)}, "minutes must be positive"),
    "two budgets in one": ({"budgets": _budget(steps=4, epochs=2)}, "exactly one of steps, epochs, minutes"),
    "steps not whole epochs": ({"budgets": _budget(steps=5)}, "not a whole number of epochs"),
    "one fold": ({"folds": {"k": 1}}, "folds.k must be at least 2"),
    "more folds than cases": ({"folds": {"k": 7}}, "7 is more folds than the 6 cases"),
    "duplicate arm names": ({"arms": _arms(name="small")}, "duplicate arm names: small"),
    "reference not an arm": ({"reference": "big"}, "reference arm 'big' is not among the arms"),
    "bad evaluation": ({"evaluation": {"window": "cube"}}, "evaluation.window must be one of"),
    "missing data": ({"data": "/nonexistent/data"}, "data /nonexistent/data does not exist"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_specs_fail_before_any_training(case, write_spec, tmp_path, caplog):
    changes, message = BAD[case]
    spec = write_spec(**changes)
    out = tmp_path / "experiment"
    with caplog.at_level(logging.ERROR):
        assert main(["experiment", "run", str(spec), "--out", str(out)]) == 2
    assert not out.exists()                 # nothing written, nothing trained
    assert str(spec) in caplog.text
    assert re.search(message, caplog.text), caplog.text


def test_an_unknown_budget_name_is_an_error(write_spec, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["experiment", "run", str(write_spec()), "--out", str(tmp_path / "x"), "--budget", "paper"]) == 2
    assert "no budget 'paper'; the spec has cpu" in caplog.text


def test_an_unknown_spec_name_lists_the_shipped_ones(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["experiment", "run", "comparsion", "--out", str(tmp_path / "x")]) == 2
    assert f"not a shipped spec ({', '.join(shipped_names())})" in caplog.text
    assert {"ablation", "comparison", "precision", "segresnet-recipe"} <= set(shipped_names())


CPU_ONLY = {"segresnet-release", "segresnet-augment", "segresnet-cases", "segresnet-deep", "segresnet-foreground",
            "segresnet-long"}   # sized for the CPU the release trains on


@pytest.mark.parametrize("name", shipped_names())
def test_shipped_specs_resolve_for_every_budget(name):
    spec = load_spec(name)
    # the studies have a GPU budget at the papers' length; the release's CV and its recipe study
    # are sized for the CPU the release is trained on
    assert set(spec.budgets) == ({"cpu"} if name in CPU_ONLY else {"cpu", "paper"})
    for budget in spec.budgets:
        resolved = resolve(spec, budget)
        # arms differ only in what they name: the model (comparison, ablation), the precision,
        # or the recipe settings under study
        studied = {"segresnet-recipe": {"loss", "ce_weight", "lr", "warmup_steps", "batch_size", "patch",
                                        "foreground_fraction"},
                   "segresnet-augment": {"augment"}, "segresnet-cases": {"train_cases"},
                   "segresnet-deep": {"model_options"}, "segresnet-foreground": {"foreground_fraction"}}
        assert set(resolved.differences()) <= studied.get(name, {"model", "precision"})
        if name in CPU_ONLY:
            assert spec.evaluation.checkpoint == "last"
        if name == "segresnet-release":
            assert len(resolved.configs) == 1


def test_the_augment_studys_reference_arm_is_the_release_run_itself():
    """Its finished runs are copied in from segresnet-release's folder, so its arm 'release' must
    resolve to exactly those runs' settings, on the same folds of the same data."""
    study, release = load_spec("segresnet-augment"), load_spec("segresnet-release")
    def budgets(spec):  # the descriptions' wording may differ
        return {name: dataclasses.replace(b, description="") for name, b in spec.budgets.items()}
    assert (study.data, study.folds, study.seeds, study.evaluation, budgets(study)) == \
        (release.data, release.folds, release.seeds, release.evaluation, budgets(release))
    ours, theirs = resolve(study, "cpu"), resolve(release, "cpu")
    assert ours.config("release", 0) == theirs.config("release", 0)
    augmented = ours.config("nnunet-aug", 0)
    assert augmented.augment.intensity.active and augmented.augment.rotate_prob > 0
    assert dataclasses.replace(augmented, augment=ours.config("release", 0).augment) == ours.config("release", 0)
    # the spatial-only arm is nnunet-aug less its intensity block, nothing else
    spatial = ours.config("spatial-only", 0)
    assert not spatial.augment.intensity.active
    assert dataclasses.replace(augmented.augment, intensity=spatial.augment.intensity) == spatial.augment
    assert dataclasses.replace(augmented, augment=spatial.augment) == spatial


def test_shipped_comparison_follows_the_dalight_paper_protocol():
    resolved = resolve(load_spec("comparison"), "paper")
    assert {c.model for c in resolved.configs.values()} == {
        "dalight3d", "unet3d", "attention_unet3d", "residual_unet3d", "vnet", "segresnet"}
    for config in resolved.configs.values():
        assert (config.patch, config.optimizer, config.lr, config.loss, config.ce_weight, config.batch_size,
                config.foreground_fraction, config.epochs) == ((64, 64, 64), "adamw", 5e-5, "dice_ce", 0.5, 1, 1.0, 50)


def test_dry_run_of_a_shipped_spec_prints_the_plan_and_writes_nothing(phantom_data, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["experiment", "run", "ablation", "--out", str(out), "--budget", "cpu", "--data",
                 str(phantom_data), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "5 arms x 2 folds x 1 seeds = 10 runs" in text
    assert "dalight-3d/fold0-seed0: pending" in text and "estimated time for the runs left" in text
    assert not out.exists()


@pytest.mark.realdata
def test_shipped_specs_validate_on_the_real_data(shared_data, tmp_path, capsys):
    for name in shipped_names():
        assert main(["experiment", "run", name, "--out", str(tmp_path / name), "--data",
                     str(shared_data / "brats18"), "--dry-run"]) == 0
        assert "(20 cases)" in capsys.readouterr().out


def test_list_names_every_shipped_spec(capsys):
    assert main(["experiment", "list"]) == 0
    text = capsys.readouterr().out
    for name in ("comparison", "ablation", "precision"):
        assert f"{name}:" in text


def test_a_gpu_budget_without_a_gpu_is_an_error_before_anything_is_written(phantom_data, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the paper budget can run here")
    out = tmp_path / "x"
    assert main(["experiment", "run", "comparison", "--out", str(out), "--budget", "paper",
                 "--data", str(phantom_data)]) == 2
    assert "budget 'paper' trains on cuda, but torch sees no CUDA device" in caplog.text
    assert not out.exists()
