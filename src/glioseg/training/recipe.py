"""Training configuration: one frozen dataclass, recipes shipped as YAML, CLI overrides on top.

Variants are config files, not subclasses: ``segresnet-brats`` and ``dalight3d-paper`` live in
``glioseg/recipes/``; a user's ``--config FILE`` and command-line options override them.
``precision`` is the controller's whole configuration (:class:`PrecisionConfig`): a policy name
given on top of a mapping (``--precision bf16`` over a recipe's ``precision: {policy: auto,
warmup_steps: 8}``) changes the policy and keeps the other settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glioseg.config import from_dict, load_yaml, to_dict
from glioseg.data.sampling import AugmentConfig
from glioseg.errors import InputError
from glioseg.inference.predictor import WINDOWS
from glioseg.training.losses import LOSSES
from glioseg.training.precision_config import PrecisionConfig
from glioseg.training.schedule import OPTIMIZERS


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.yaml`` and in every checkpoint."""

    model: str = "segresnet"
    model_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "dice"
    ce_weight: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 1
    patch: tuple[int, ...] = (128, 128, 128)
    foreground_fraction: float = 0.33
    id_dropout: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    seed: int = 0
    val_every: int = 1
    val_fraction: float = 0.2
    val_window: str = "box"
    val_overlap: float = 0.5
    workers: int = 1
    device: str = "auto"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name, valid in (("loss", LOSSES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in valid:
                raise InputError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if len(self.patch) != 3 or min(self.patch) < 8:
            raise InputError(f"patch must be three sizes of at least 8 voxels, got {self.patch}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        windows = [w for w in WINDOWS if w != "volume"]   # validation volumes are cached brain boxes
        if self.val_window not in windows:
            raise InputError(f"val_window must be one of {', '.join(windows)}, got {self.val_window!r}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise InputError(f"val_overlap must be in [0, 1), got {self.val_overlap}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "TrainConfig":
        """From plain settings, including a run saved before ``precision`` held every option."""
        return from_dict(cls, upgrade_saved(data), where)


def default_recipe(model: str | None) -> str:
    """The recipe a model trains with when none is named (``glioseg train``, an experiment's arm):
    SegResNet its published recipe; DALight-3D and its baselines the paper's."""
    return "segresnet-brats" if (model or "segresnet") == "segresnet" else "dalight3d-paper"


def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """Runs and checkpoints written before ``precision_options`` joined ``precision``.

    Such a run saved ``precision: NAME`` beside ``precision_options: {...}``; they are the same
    settings as ``precision: {policy: NAME, ...}``, so an old run still resumes and reads.
    """
    if "precision_options" not in data:
        return data
    data = dict(data)
    options = data.pop("precision_options") or {}
    return merge_settings(data, {"precision": {**_as_mapping(data.get("precision", {})), **options}})


def _as_mapping(precision: Any) -> dict[str, Any]:
    if isinstance(precision, PrecisionConfig):
        return to_dict(precision)
    return dict(precision) if isinstance(precision, dict) else {PrecisionConfig.shorthand: precision}


def merge_settings(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``changes``; a ``precision`` change merges into the base's precision."""
    merged = {**base, **changes}
    if "precision" in changes and "precision" in base:
        merged["precision"] = {**_as_mapping(base["precision"]), **_as_mapping(changes["precision"])}
    return merged


def recipe_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("glioseg.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def recipe_dict(name: str) -> dict[str, Any]:
    """The settings of a shipped recipe; an unknown name lists the known ones."""
    if name not in recipe_names():
        raise InputError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    with resources.as_file(resources.files("glioseg.recipes") / f"{name}.yaml") as path:
        return load_yaml(path)


def build_config(recipe: str | None = None, config_file: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Recipe, then the user's file, then command-line overrides (``None`` values ignored)."""
    data: dict[str, Any] = recipe_dict(recipe) if recipe else {}
    if config_file is not None:
        data = merge_settings(data, load_yaml(config_file))
    data = merge_settings(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(TrainConfig, data, where=str(config_file) if config_file else "config")
