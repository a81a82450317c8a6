"""An experiment spec: YAML → frozen dataclasses, checked as a whole before anything trains.

A spec names the data, the folds, the training seeds, the arms (model + recipe + overrides),
one shared budget per budget name (``cpu``, ``paper``, ...) and the evaluation. Everything an
arm does not name is the same for every arm: split, seeds, sampler, augmentation, schedule and
evaluation. :func:`resolve` turns a spec and a budget name into one checked
:class:`~glioseg.training.recipe.TrainConfig` per arm (:mod:`glioseg.experiments.resolve`), so an
arm naming an unknown model, a bad override or an impossible budget fails before the first run starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glioseg.config import from_dict, load_yaml, to_dict
from glioseg.data.labels import REGIONS
from glioseg.errors import GliosegError

# Settings the experiment owns: the budget sets how long every arm trains, the seeds list the
# seed; an arm that overrides them would not get the same treatment as the others.
SHARED = ("seed", "epochs", "steps_per_epoch", "val_every", "device", "workers")
METRICS = ("dice", "hd95")
CHECKPOINTS = ("best", "last")


class SpecError(GliosegError):
    """The spec cannot run as written; nothing has been trained."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class FoldSpec:
    """k-fold cross-validation over cases, stratified by site and grade where they are known.

    ``grades``: for datasets whose layout does not carry the grade, a mapping case → grade in
    the spec itself, or a CSV file (columns ``case``, ``grade``; relative to the spec file). The
    assignment of training seed ``s`` is drawn from ``(seed, s)``: a reshuffled k-fold per seed,
    each case held out exactly once per seed.
    """

    k: int = 2
    seed: int = 0
    grades: str | dict[str, str] | None = None


@dataclass(frozen=True)
class ArmSpec:
    name: str
    model: str
    recipe: str = "dalight3d-paper"
    overrides: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class BudgetSpec:
    """How long every run trains: exactly one of ``steps``, ``epochs`` or ``minutes``.

    ``minutes`` stops a run once its optimiser steps took that long (the run is then checkpointed
    and evaluated); ``max_epochs`` bounds it and sets the schedule's length. ``s_per_step`` (arm or
    model name → seconds, as measured on the machine the budget was sized for) feeds ``--dry-run``'s
    time estimate only; ``s_per_case`` likewise for whole-case prediction.
    """

    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    max_epochs: int | None = None
    steps_per_epoch: int | None = None
    val_every: int | None = None
    device: str = "auto"
    workers: int = 1
    eval_device: str = "cpu"
    s_per_step: dict[str, float] = field(default_factory=dict)
    s_per_case: float = 10.0
    description: str = ""


@dataclass(frozen=True)
class EvaluationSpec:
    """Whole held-out cases through ``glioseg predict``'s pipeline, scored like ``glioseg evaluate``."""

    window: str = "box"
    checkpoint: str = "best"
    regions: tuple[str, ...] = REGIONS
    metrics: tuple[str, ...] = METRICS
    target_dice: float | None = None
    alpha: float = 0.05
    bootstrap: int = 10000


@dataclass(frozen=True)
class SlurmSpec:
    """submitit settings of ``--executor slurm``; ``cluster: local`` runs submitit's local executor."""

    cluster: str = "slurm"
    partition: str | None = None
    timeout_min: int = 720
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    data: str
    arms: tuple[ArmSpec, ...]
    reference: str
    budgets: dict[str, BudgetSpec]
    description: str = ""
    folds: FoldSpec = field(default_factory=FoldSpec)
    seeds: tuple[int, ...] = (0,)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    source: str = ""       # where the spec was read from (set by load_spec, not by the YAML)
    base: str = "."        # the folder relative paths are resolved against

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    def data_path(self) -> Path:
        path = Path(self.data).expanduser()
        return path if path.is_absolute() else Path(self.base) / path

    def grades_path(self) -> Path | None:
        """The grades CSV file; None when the grades are inline or not given."""
        if not isinstance(self.folds.grades, str):
            return None
        path = Path(self.folds.grades).expanduser()
        return path if path.is_absolute() else Path(self.base) / path


def shipped_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("glioseg.experiments.specs").iterdir()
                  if p.name.endswith(".yaml"))


def load_spec(spec: str | Path, data: str | None = None) -> ExperimentSpec:
    """A spec file, or a shipped spec by name (its relative data path is taken from the current
    folder); ``data`` replaces the spec's data."""
    path = Path(spec)
    if path.is_file():
        raw, source, base = load_yaml(path), str(path), str(path.resolve().parent)
    elif str(spec) in shipped_names():
        with resources.as_file(resources.files("glioseg.experiments.specs") / f"{spec}.yaml") as shipped:
            raw, source, base = load_yaml(shipped), f"shipped spec {spec}", "."
    else:
        raise SpecError(str(spec), f"no such spec file, and not a shipped spec ({', '.join(shipped_names())})")
    for key in ("source", "base"):
        if key in raw:
            raise SpecError(source, f"{key!r} is not a spec setting")
    if data is not None:
        raw["data"], base = str(data), "."
    return spec_from_dict(raw, source, base)


def spec_from_dict(raw: dict[str, Any], source: str, base: str) -> ExperimentSpec:
    """The spec of a YAML mapping (or of :func:`spec_dict`'s output); errors name ``source``."""
    raw = dict(raw)
    try:
        # from_dict does not descend into a mapping of dataclasses: budgets are built one by one
        budgets = raw.get("budgets")
        if not isinstance(budgets, dict) or not budgets:
            raise ValueError("budgets: a mapping of budget names (cpu, paper, ...) to budgets is required")
        raw["budgets"] = {str(name): from_dict(BudgetSpec, value, where=f"budgets.{name}")
                          for name, value in budgets.items()}
        return from_dict(ExperimentSpec, {**raw, "source": source, "base": base}, where="spec")
    except ValueError as exc:
        raise SpecError(source, str(exc)) from exc


def spec_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec as plain values, its data path resolved (what ``experiment.json`` keeps)."""
    data = to_dict(spec)
    data["data"] = str(spec.data_path().resolve())
    grades = spec.grades_path()
    if grades is not None:
        data["folds"]["grades"] = str(grades.resolve())
    for key in ("source", "base"):
        data.pop(key)
    return data
