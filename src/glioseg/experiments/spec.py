"""An experiment spec: YAML → frozen dataclasses, checked as a whole before anything trains.

A spec names the data (a dataset, or a list of datasets used as one: :mod:`glioseg.data.sources`), the folds, the training seeds, the arms (model + recipe + overrides),
one shared budget per budget name (``cpu``, ``paper``, ...) and the evaluation. Everything an
arm does not name is the same for every arm: split, seeds, sampler, augmentation, schedule and
evaluation. An arm without a recipe trains with its model's (``training.recipe.default_recipe``,
as ``glioseg train`` does). Each dataclass checks its own fields when built (a bad budget, fold
count, window or arm list fails naming the spec); :func:`resolve` then turns a spec and a budget
name into one checked :class:`~glioseg.training.recipe.TrainConfig` per arm
(:mod:`glioseg.experiments.resolve`), so an arm naming an unknown model or a bad override fails
before the first run starts too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glioseg.config import from_dict, load_yaml, to_dict
from glioseg.data.labels import REGIONS
from glioseg.errors import GliosegError
from glioseg.experiments.spec_inherit import expand
from glioseg.inference.predictor import WINDOWS
from glioseg.training.recipe import default_recipe

# Settings the experiment owns: the budget sets how long every arm trains, the seeds list the
# seed; an arm that overrides them would not get the same treatment as the others.
SHARED = ("seed", "epochs", "steps_per_epoch", "val_every", "device", "workers")
METRICS = ("dice", "hd95")
CHECKPOINTS = ("best", "last")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def slug(name: str) -> str:
    """The folder name of an arm: ``Residual U-Net`` → ``residual-u-net``."""
    return _UNSAFE.sub("-", name.strip()).strip("-.").lower()


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

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"folds.k must be at least 2, got {self.k}")


@dataclass(frozen=True)
class ArmSpec:
    """One arm: a model, its options, a recipe (by default the model's) and overrides of it.

    ``train_cases``: train each fold model on only that many of its fold's training cases (a
    stratified subset, nested between arms: :func:`glioseg.experiments.folds.nested_order`), for a
    learning curve against the number of cases; the held-out cases stay the fold's own.
    """
    name: str
    model: str
    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    train_cases: int | None = None

    def __post_init__(self):
        if not slug(self.name):
            raise ValueError(f"arm names need a letter or digit: {self.name!r}")
        if self.train_cases is not None and (isinstance(self.train_cases, bool) or not isinstance(self.train_cases, int)
                                             or self.train_cases < 1):
            raise ValueError(f"arm {self.name!r}: train_cases must be a positive whole number, got {self.train_cases!r}")
        if self.recipe is None:
            object.__setattr__(self, "recipe", default_recipe(self.model))


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

    def __post_init__(self):
        given = [k for k in ("steps", "epochs", "minutes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of steps, epochs, minutes; got {given or 'none'}")
        for key in ("steps", "epochs", "minutes", "max_epochs", "steps_per_epoch", "val_every"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be positive, got {value}")
        if self.steps is not None and self.steps_per_epoch and self.steps % self.steps_per_epoch:
            raise ValueError(f"steps {self.steps} is not a whole number of epochs of {self.steps_per_epoch} steps")


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

    def __post_init__(self):
        problems = []
        if self.window not in WINDOWS:
            problems.append(f"evaluation.window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.checkpoint not in CHECKPOINTS:
            problems.append(f"evaluation.checkpoint must be one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")
        if not self.regions or set(self.regions) - set(REGIONS):
            problems.append(f"evaluation.regions must be among {', '.join(REGIONS)}, got {list(self.regions)}")
        if not self.metrics or set(self.metrics) - set(METRICS):
            problems.append(f"evaluation.metrics must be among {', '.join(METRICS)}, got {list(self.metrics)}")
        if not 0 < self.alpha < 1 or self.bootstrap < 100:
            problems.append(f"evaluation needs 0 < alpha < 1 and bootstrap >= 100, got {self.alpha}, {self.bootstrap}")
        if self.target_dice is not None and not 0 < self.target_dice <= 1:
            problems.append(f"evaluation.target_dice must be in (0, 1], got {self.target_dice}")
        if problems:
            raise ValueError("; ".join(problems))


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
    data: str | tuple[str, ...]     # one dataset, or several (a list in the YAML) used as one
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

    def __post_init__(self):
        data = self.data
        if isinstance(data, (list, tuple)):
            if not data or not all(isinstance(d, str) and d for d in data):
                raise ValueError(f"data must be a dataset path or a list of them, got {list(data)!r}")
            # a list of one is that dataset: the same experiment, recorded as it always was
            object.__setattr__(self, "data", data[0] if len(data) == 1 else tuple(data))
        elif not isinstance(data, str) or not data:
            raise ValueError(f"data must be a dataset path or a list of them, got {data!r}")
        names = [a.name for a in self.arms]
        # one arm is a cross-validation of one recipe (a release measured the way it ships): the
        # report then has its per-case held-out scores and no paired comparison
        if not names:
            raise ValueError("an experiment needs at least one arm; found none")
        for label, values in (("arm names", names), ("arm folder names", [slug(n) for n in names])):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"duplicate {label}: {', '.join(duplicates)}")
        if self.reference not in names:
            raise ValueError(f"reference arm {self.reference!r} is not among the arms ({', '.join(names)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {list(self.seeds)}")

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    @property
    def several(self) -> bool:
        """Several datasets, used as one."""
        return not isinstance(self.data, str)

    def data_paths(self) -> list[Path]:
        """Every dataset of the spec, relative paths resolved against the spec's folder."""
        return [self._path(d) for d in ((self.data,) if isinstance(self.data, str) else self.data)]

    def data_path(self) -> Path:
        """The one dataset of a spec of one (see :meth:`data_paths` for several)."""
        if self.several:
            raise ValueError(f"{self.source}: the spec names several datasets; use data_paths()")
        return self._path(self.data)

    def _path(self, data: str) -> Path:
        path = Path(data).expanduser()
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


def _read(spec: str | Path, folder: str = ".") -> tuple[dict[str, Any], str, str]:
    """(raw mapping, source, base) of a spec file (relative to ``folder``) or a shipped spec's name."""
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else Path(folder) / path
    if path.is_file():
        return load_yaml(path), str(path), str(path.resolve().parent)
    if str(spec) in shipped_names():
        with resources.as_file(resources.files("glioseg.experiments.specs") / f"{spec}.yaml") as shipped:
            return load_yaml(shipped), f"shipped spec {spec}", "."
    raise SpecError(str(spec), f"no such spec file, and not a shipped spec ({', '.join(shipped_names())})")


def load_spec(spec: str | Path, data: str | Path | list | None = None) -> ExperimentSpec:
    """A spec file, or a shipped spec by name (its relative data path is taken from the current
    folder); ``data`` (one path or a list) replaces the spec's data. ``extends`` and an arm's
    ``like`` are expanded first (:mod:`glioseg.experiments.spec_inherit`)."""
    raw, source, base = _read(spec)
    for key in ("source", "base"):
        if key in raw:
            raise SpecError(source, f"{key!r} is not a spec setting")
    raw = expand(raw, source, base, lambda name, _source, folder: _read(name, folder))
    if data is not None:   # --data: one path or several
        given = [str(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
        raw["data"], base = given[0] if len(given) == 1 else given, "."
    return spec_from_dict(raw, source, base)


def spec_from_dict(raw: dict[str, Any], source: str, base: str) -> ExperimentSpec:
    """The spec of a YAML mapping (or of :func:`spec_dict`'s output); errors name ``source``."""
    raw = dict(raw)
    try:
        # from_dict does not descend into a mapping of dataclasses: budgets are built one by one
        budgets = raw.get("budgets")
        if not isinstance(budgets, dict) or not budgets:
            raise ValueError("budgets: a mapping of budget names (cpu, paper, ...) to budgets is required")
        raw["budgets"] = {str(name): _budget(name, value) for name, value in budgets.items()}
        return from_dict(ExperimentSpec, {**raw, "source": source, "base": base}, where="spec")
    except ValueError as exc:
        raise SpecError(source, str(exc)) from exc


def _budget(name: str, value: Any) -> BudgetSpec:
    try:
        return from_dict(BudgetSpec, value, where=f"budgets.{name}")
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("budgets.") else f"budget {name!r}: {message}") from exc


def spec_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec as plain values, its data path resolved (what ``experiment.json`` keeps)."""
    data = to_dict(spec)
    paths = [str(p.resolve()) for p in spec.data_paths()]
    data["data"] = paths if spec.several else paths[0]
    grades = spec.grades_path()
    if grades is not None:
        data["folds"]["grades"] = str(grades.resolve())
    for key in ("source", "base"):
        data.pop(key)
    return data
