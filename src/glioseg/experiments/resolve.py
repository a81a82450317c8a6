"""A spec and a budget name → one checked training configuration per arm, or a :class:`SpecError`.

Every check that needs no data and no training runs here, for every arm at once, so that an
impossible spec fails in a second rather than after hours of the arms listed before the bad one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from glioseg.config import to_dict
from glioseg.experiments.spec import SHARED, ArmSpec, BudgetSpec, ExperimentSpec, SpecError
from glioseg.training.distributed import DistInfo, pick_device
from glioseg.precisions import auto_levels, describe_device
from glioseg.training.precision.probe import supported_precisions
from glioseg.training.preflight import check_model_settings
from glioseg.training.recipe import TrainConfig, build_config, recipe_dict, recipe_names

@dataclass(frozen=True)
class Resolved:
    """The spec with one budget chosen and every arm's configuration (seed 0; :meth:`config`)."""

    spec: ExperimentSpec
    budget_name: str
    budget: BudgetSpec
    configs: dict[str, TrainConfig]

    def config(self, arm: str, seed: int) -> TrainConfig:
        return dataclasses.replace(self.configs[arm], seed=seed)

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.spec.arms]

    def differences(self) -> dict[str, dict[str, Any]]:
        """Settings whose value is not the same in every arm: setting → {arm: value}."""
        dicts = {name: to_dict(c) for name, c in self.configs.items()}
        keys = list(next(iter(dicts.values())))
        out = {k: _differing({a: d[k] for a, d in dicts.items()}) for k in keys
               if len({repr(d[k]) for d in dicts.values()}) > 1}
        cases = {a.name: a.train_cases or "all" for a in self.spec.arms}   # the arm's, not the recipe's
        if len(set(map(str, cases.values()))) > 1:
            out["train_cases"] = cases
        return out


def _differing(values: dict[str, Any]) -> dict[str, Any]:
    """arm → value; of settings that are mappings (precision) only the fields that differ."""
    if not all(isinstance(v, dict) for v in values.values()):
        return values
    every = list(dict.fromkeys(f for v in values.values() for f in v))   # a key only some arms give counts too
    fields = [f for f in every if len({repr(v.get(f)) for v in values.values()}) > 1]
    return {arm: {f: v.get(f) for f in fields} for arm, v in values.items()}


def _budget_named(spec: ExperimentSpec, name: str) -> BudgetSpec:
    if name not in spec.budgets:
        raise SpecError(spec.source, f"no budget {name!r}; the spec has {', '.join(spec.budgets)}")
    return spec.budgets[name]   # checked when the spec was read (BudgetSpec checks itself)


def _budget_settings(budget: BudgetSpec, recipe: dict) -> dict[str, Any]:
    steps_per_epoch = budget.steps_per_epoch or recipe.get("steps_per_epoch", TrainConfig.steps_per_epoch)
    if budget.steps is not None:
        epochs = -(-budget.steps // steps_per_epoch)
    elif budget.epochs is not None:
        epochs = budget.epochs
    else:
        epochs = budget.max_epochs or recipe.get("epochs", TrainConfig.epochs)
    settings = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "device": budget.device,
                "workers": budget.workers}
    if budget.val_every is not None:
        settings["val_every"] = budget.val_every
    return settings


def arm_config(spec: ExperimentSpec, arm: ArmSpec, budget: BudgetSpec) -> TrainConfig:
    """The arm's TrainConfig: recipe, then the arm's overrides, then the shared budget."""
    where = f"{spec.source}: arm {arm.name!r}"
    if arm.recipe not in recipe_names():
        raise SpecError(where, f"unknown recipe {arm.recipe!r}; shipped recipes: {', '.join(recipe_names())}")
    owned = sorted(set(arm.overrides) & (set(SHARED) | {"model", "model_options"}))
    if owned:
        raise SpecError(where, f"overrides may not set {', '.join(owned)}: the model and its options have "
                               "their own keys, and seeds and budget are shared by every arm")
    try:
        recipe = recipe_dict(arm.recipe)
        overrides = {**arm.overrides, "model": arm.model, "model_options": dict(arm.model_options),
                     **_budget_settings(budget, recipe), "seed": 0}
        config = build_config(arm.recipe, None, overrides)
        check_model_settings(config)
        return config
    except ValueError as exc:
        raise SpecError(where, str(exc)) from exc


def resolve(spec: ExperimentSpec, budget_name: str) -> Resolved:
    """Every check that needs neither data nor training, for the whole spec at once (the spec's
    dataclasses checked their own fields when it was read; here: recipes, overrides, models)."""
    budget = _budget_named(spec, budget_name)
    configs = {arm.name: arm_config(spec, arm, budget) for arm in spec.arms}
    return Resolved(spec, budget_name, budget, configs)


def precision_verdicts(resolved: Resolved) -> dict[str, str]:
    """Arm → why its fixed low precision cannot train at a useful speed on this machine.

    The same rule as every ``--precision auto``: autocast support on the device, then the
    device's native levels (``glioseg.precisions.auto_levels``; an emulated level is 2.5-90x
    slower than fp32 on a CPU). Such arms are reported with the reason instead of training for
    days or being dropped silently.
    """
    verdicts = {}
    for arm, config in resolved.configs.items():
        policy = config.precision.policy
        if policy not in ("bf16", "fp16"):
            continue
        device = pick_device(config.device, DistInfo())
        if policy not in supported_precisions(device):
            verdicts[arm] = f"{policy} autocast is not supported on {device}"
            continue
        if policy not in auto_levels(device):
            verdicts[arm] = f"{policy} is not native on {describe_device(device)} (auto would not use it): not run"
    return verdicts
