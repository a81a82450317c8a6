"""TrainConfig: precision is one mapping, a policy name is its shorthand, old runs still read."""
from __future__ import annotations

import dataclasses

import pytest

from glioseg.config import to_dict
from glioseg.training.precision.config import PrecisionConfig
from glioseg.data.augment import AugmentConfig
from glioseg.training.recipe import TrainConfig, build_config, layered_config, merge_settings
from glioseg.training.settings import trained_differences


def test_a_policy_name_is_a_precision_config():
    config = TrainConfig.from_dict({"precision": "bf16"})
    assert config.precision == PrecisionConfig(policy="bf16")
    assert TrainConfig.from_dict(to_dict(config)) == config


def test_a_policy_on_top_of_a_recipe_keeps_its_other_settings(tmp_path):
    demo = build_config("demo")
    assert demo.precision.policy == "auto" and demo.precision.warmup_steps == 8
    fixed = build_config("demo", None, {"precision": "fp32"})
    assert fixed.precision == PrecisionConfig(policy="fp32", warmup_steps=8, calm_steps=4)
    user = tmp_path / "user.yaml"
    user.write_text("precision: {calm_steps: 2}\n")
    assert build_config("demo", user).precision == PrecisionConfig(policy="auto", warmup_steps=8, calm_steps=2)


def test_merge_settings_replaces_everything_else():
    assert merge_settings({"lr": 1.0, "patch": [8, 8, 8]}, {"patch": [16, 16, 16]}) == {
        "lr": 1.0, "patch": [16, 16, 16]}


def test_a_nested_augment_block_merges_into_the_one_below_it(tmp_path):
    """Layers merge blocks key by key (at any depth): a file's ``augment:`` keeps the recipe's other
    augmentation settings instead of resetting them to the defaults."""
    recipe = {"augment": {"zoom": 0.1, "zoom_prob": 0.5}, "precision": {"policy": "auto", "warmup_steps": 8}}
    config = layered_config(recipe, {"augment": {"rotate_prob": 0.2}, "precision": "bf16"})
    assert (config.augment.zoom, config.augment.zoom_prob, config.augment.rotate_prob) == (0.1, 0.5, 0.2)
    assert config.precision == PrecisionConfig(policy="bf16", warmup_steps=8)
    user = tmp_path / "user.yaml"
    user.write_text("augment: {rotate_prob: 0.2, rotate_deg: [10, 10, 10]}\nprecision: {calm_steps: 2}\n")
    built = build_config("demo", user, {"augment": None})
    assert built.augment == AugmentConfig(rotate_prob=0.2, rotate_deg=(10.0, 10.0, 10.0))
    assert built.precision == PrecisionConfig(policy="auto", warmup_steps=8, calm_steps=2)


def test_a_model_s_options_and_plain_values_replace_the_layer_below():
    config = layered_config({"model_options": {"init_filters": 16, "dropout": 0.1}, "lr": 1.0},
                            {"model_options": {"init_filters": 8}, "lr": None})
    assert config.model_options == {"init_filters": 8} and config.lr == 1.0   # None: not given


def test_a_run_saved_with_precision_options_still_reads():
    saved = {"precision": "auto", "precision_options": {"warmup_steps": 3, "calm_steps": 2}}
    assert TrainConfig.from_dict(saved).precision == PrecisionConfig(policy="auto", warmup_steps=3, calm_steps=2)


def _saved_before_loss_grad_z() -> dict:
    """A run's config.yaml as written before loss_grad_z existed: every other precision field."""
    saved = to_dict(build_config("segresnet-brats"))
    del saved["precision"]["loss_grad_z"]
    return saved


def test_a_run_saved_before_loss_grad_z_reads_as_it_trained():
    # such a run fell back on every loss spike; new runs only on those the gradients confirm
    assert TrainConfig.from_dict(_saved_before_loss_grad_z()).precision.loss_grad_z is None
    fresh = build_config("segresnet-brats")
    assert fresh.precision.loss_grad_z == 3.0 and TrainConfig.from_dict(to_dict(fresh)) == fresh
    # a user's block names a few settings: loss_grad_z is then the default like the rest
    assert TrainConfig.from_dict({"precision": {"policy": "auto", "grad_z": 5.0}}).precision.loss_grad_z == 3.0


def test_a_started_run_goes_on_with_its_own_settings_and_an_edit_is_named():
    saved, spec = _saved_before_loss_grad_z(), build_config("segresnet-brats")
    before, changed = trained_differences(saved, spec, "config.yaml")
    assert changed == {} and before.precision.loss_grad_z is None
    assert trained_differences(saved, dataclasses.replace(spec, lr=spec.lr / 2), "c")[1] == {"lr": (spec.lr, spec.lr / 2)}
    edited = dataclasses.replace(spec, precision=dataclasses.replace(spec.precision, grad_z=5.0))
    assert list(trained_differences(saved, edited, "c")[1]) == ["precision"]
    current = to_dict(spec)   # saved by this version: loss_grad_z is compared like any setting
    unconfirmed = dataclasses.replace(spec, precision=dataclasses.replace(spec.precision, loss_grad_z=None))
    assert list(trained_differences(current, unconfirmed, "c")[1]) == ["precision"]


@pytest.mark.parametrize("settings, message", [
    ({"precision": "fp8"}, "policy must be one of"),
    ({"precision": {"policy": "auto", "warmup": 3}}, r"precision: unknown key\(s\) warmup"),
    ({"precision_options": {"warmup_steps": 3}}, r"unknown key\(s\) precision_options"),
])
def test_bad_precision_settings_name_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        build_config(None, None, settings)


@pytest.mark.parametrize("settings, message", [
    ({"loss": "focal"}, "loss must be one of dice, dice_bce, dice_ce, got 'focal'"),
    ({"optimizer": "sgd"}, "optimizer must be one of adam, adamw, got 'sgd'"),
])
def test_unknown_loss_or_optimizer_is_refused_when_the_config_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        build_config(None, None, settings)


def test_a_precision_config_reads_as_its_policy_and_what_differs():
    assert str(PrecisionConfig(policy="bf16")) == "bf16"
    assert str(build_config("demo").precision) == "auto (warmup_steps=8, calm_steps=4)"
