"""A spec and a budget name → one checked training configuration per arm, or a :class:`SpecError`.

Every check that needs no data and no training runs here, for every arm at once, so that an
impossible spec fails in a second rather than after hours of the arms listed before the bad one.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from glioseg.config import to_dict
from glioseg.data.labels import REGIONS
from glioseg.experiments.spec import (CHECKPOINTS, METRICS, SHARED, ArmSpec, BudgetSpec, ExperimentSpec,
                                      SpecError)
from glioseg.inference.predictor import WINDOWS
from glioseg.training.distributed import DistInfo, pick_device
from glioseg.training.precision_probe import conv_prescreen, supported_precisions
from glioseg.training.preflight import check_model_settings
from glioseg.training.recipe import TrainConfig, build_config, recipe_dict, recipe_names

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def slug(name: str) -> str:
    """The folder name of an arm: ``Residual U-Net`` → ``residual-u-net``."""
    return _UNSAFE.sub("-", name.strip()).strip("-.").lower()


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
        return {k: _differing({a: d[k] for a, d in dicts.items()}) for k in keys
                if len({repr(d[k]) for d in dicts.values()}) > 1}


def _differing(values: dict[str, Any]) -> dict[str, Any]:
    """arm → value; of settings that are mappings (precision) only the fields that differ."""
    if not all(isinstance(v, dict) for v in values.values()):
        return values
    fields = [f for f in next(iter(values.values())) if len({repr(v.get(f)) for v in values.values()}) > 1]
    return {arm: {f: v.get(f) for f in fields} for arm, v in values.items()}


def _check_arms(spec: ExperimentSpec) -> None:
    names = [a.name for a in spec.arms]
    if len(names) < 2:
        raise SpecError(spec.source, f"an experiment compares at least two arms; found {len(names)}")
    for label, values in (("arm names", names), ("arm folder names", [slug(n) for n in names])):
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise SpecError(spec.source, f"duplicate {label}: {', '.join(duplicates)}")
    if any(not slug(n) for n in names):
        raise SpecError(spec.source, f"arm names need a letter or digit: {names}")
    if spec.reference not in names:
        raise SpecError(spec.source, f"reference arm {spec.reference!r} is not among the arms ({', '.join(names)})")


def _check_budget(spec: ExperimentSpec, name: str) -> BudgetSpec:
    if name not in spec.budgets:
        raise SpecError(spec.source, f"no budget {name!r}; the spec has {', '.join(spec.budgets)}")
    budget, where = spec.budgets[name], f"budget {name!r}"
    given = [k for k in ("steps", "epochs", "minutes") if getattr(budget, k) is not None]
    if len(given) != 1:
        raise SpecError(spec.source, f"{where} needs exactly one of steps, epochs, minutes; got {given or 'none'}")
    for key in ("steps", "epochs", "minutes", "max_epochs", "steps_per_epoch", "val_every"):
        value = getattr(budget, key)
        if value is not None and not value > 0:
            raise SpecError(spec.source, f"{where}: {key} must be positive, got {value}")
    if budget.steps is not None and budget.steps_per_epoch and budget.steps % budget.steps_per_epoch:
        raise SpecError(spec.source, f"{where}: steps {budget.steps} is not a whole number of epochs of "
                                     f"{budget.steps_per_epoch} steps")
    return budget


def _check_rest(spec: ExperimentSpec) -> None:
    ev = spec.evaluation
    problems = []
    if spec.folds.k < 2:
        problems.append(f"folds.k must be at least 2, got {spec.folds.k}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"seeds must be a non-empty list of distinct seeds, got {list(spec.seeds)}")
    if ev.window not in WINDOWS:
        problems.append(f"evaluation.window must be one of {', '.join(WINDOWS)}, got {ev.window!r}")
    if ev.checkpoint not in CHECKPOINTS:
        problems.append(f"evaluation.checkpoint must be one of {', '.join(CHECKPOINTS)}, got {ev.checkpoint!r}")
    if not ev.regions or set(ev.regions) - set(REGIONS):
        problems.append(f"evaluation.regions must be among {', '.join(REGIONS)}, got {list(ev.regions)}")
    if not ev.metrics or set(ev.metrics) - set(METRICS):
        problems.append(f"evaluation.metrics must be among {', '.join(METRICS)}, got {list(ev.metrics)}")
    if not 0 < ev.alpha < 1 or ev.bootstrap < 100:
        problems.append(f"evaluation needs 0 < alpha < 1 and bootstrap >= 100, got {ev.alpha}, {ev.bootstrap}")
    if ev.target_dice is not None and not 0 < ev.target_dice <= 1:
        problems.append(f"evaluation.target_dice must be in (0, 1], got {ev.target_dice}")
    if problems:
        raise SpecError(spec.source, "; ".join(problems))


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
    """Every check that needs neither data nor training, for the whole spec at once."""
    _check_arms(spec)
    _check_rest(spec)
    budget = _check_budget(spec, budget_name)
    configs = {arm.name: arm_config(spec, arm, budget) for arm in spec.arms}
    return Resolved(spec, budget_name, budget, configs)


def precision_verdicts(resolved: Resolved) -> dict[str, str]:
    """Arm → why its fixed low precision cannot train at a useful speed on this machine.

    The same checks as ``--precision auto``'s probe: autocast support on the device, and on a
    CPU the sub-second conv pre-screen (a level over ``probe_give_up`` x fp32 is ruled out). Such
    arms are reported with the reason instead of training for days or being dropped silently.
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
        give_up = config.precision.probe_give_up
        screened = conv_prescreen(device, ("fp32", policy), give_up)
        if policy in screened:
            verdicts[arm] = f"{screened[policy]} (probe_give_up {give_up:g}x): not run"
    return verdicts
