"""Training configuration: one frozen dataclass, recipes shipped as YAML, CLI overrides on top.

Variants are config files, not subclasses: ``segresnet-brats`` and ``dalight3d-paper`` live in
``glioseg/recipes/``; a user's ``--config FILE`` and command-line options override them.
Every TrainConfig is assembled one way (:func:`layered_config`): layers merged in order, settings
blocks deeply, so a file's ``augment: {rotate_prob: 0.2}`` changes that key of the recipe's block
and keeps the rest. ``precision`` is the controller's whole configuration (:class:`PrecisionConfig`):
a policy name given on top of a mapping (``--precision bf16`` over a recipe's ``precision: {policy:
auto, warmup_steps: 8}``) changes the policy and keeps the other settings.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from glioseg.config import from_dict, load_yaml, to_dict
from glioseg.data.sampling import AugmentConfig
from glioseg.errors import InputError
from glioseg.inference.predictor import WINDOWS
from glioseg.training.losses import LOSSES
from glioseg.training.precision.config import PrecisionConfig
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
    snapshot_every: int = 0

    def __post_init__(self) -> None:
        for name, valid in (("loss", LOSSES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in valid:
                raise InputError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if len(self.patch) != 3 or min(self.patch) < 8:
            raise InputError(f"patch must be three sizes of at least 8 voxels, got {self.patch}")
        if self.snapshot_every < 0:
            raise InputError(f"snapshot_every must be 0 (none) or a number of steps, got {self.snapshot_every}")
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
    """Runs and checkpoints written by older versions, read as what they trained with.

    A run saved before ``precision_options`` joined ``precision`` saved ``precision: NAME`` beside
    ``precision_options: {...}``: the same settings as ``precision: {policy: NAME, ...}``. A run
    saved before ``loss_grad_z`` existed: :meth:`PrecisionConfig.upgrade_saved`.
    """
    if "precision_options" in data:
        data = dict(data)
        options = data.pop("precision_options") or {}
        data = merge_settings(data, {"precision": {**_as_mapping(PrecisionConfig, data.get("precision", {})),
                                                   **options}})
    if isinstance(data.get("precision"), dict):
        data = {**data, "precision": PrecisionConfig.upgrade_saved(data["precision"])}
    return data


def _as_mapping(kind: type, value: Any) -> dict[str, Any]:
    """A nested block's settings as a mapping: a dataclass, a mapping, or the shorthand's plain value."""
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, dict):
        return dict(value)
    shorthand = getattr(kind, "shorthand", None)
    if shorthand is None:   # not a block that takes a plain value: from_dict names the mistake
        return value
    return {shorthand: value}


def _blocks(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are settings blocks of their own (nested dataclasses)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def merge_settings(base: dict[str, Any], changes: dict[str, Any], cls: type = None) -> dict[str, Any]:
    """``base`` updated by ``changes``, blocks deeply: a change to ``augment`` or ``precision`` (a
    mapping, or the policy alone) changes those keys of the base's block and keeps its others, at any
    depth. Plain values and mappings that are not blocks (``model_options``: a model's own) replace."""
    cls = cls or TrainConfig
    blocks = _blocks(cls)
    merged = {**base, **changes}
    for name, kind in blocks.items():
        if name in changes and name in base:
            old, new = _as_mapping(kind, base[name]), _as_mapping(kind, changes[name])
            merged[name] = merge_settings(old, new, kind) if isinstance(old, dict) and isinstance(new, dict) else new
    return merged


def layered_config(*layers: dict[str, Any], where: str = "config") -> TrainConfig:
    """The one way a TrainConfig is assembled: each layer (recipe, file, a run's saved settings,
    an arm's overrides, options) merged over the ones before by :func:`merge_settings`, then read
    and checked by ``config.from_dict``; ``None`` values of a layer are not settings. A saved run's
    settings go through :func:`upgrade_saved` first (a user's file may not use the old form)."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge_settings(data, {k: v for k, v in layer.items() if v is not None})
    return from_dict(TrainConfig, data, where)


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
    """Recipe, then the user's file, then command-line overrides (``None`` values ignored), merged
    by :func:`layered_config` (a file's ``augment:`` changes only the keys it names)."""
    return layered_config(recipe_dict(recipe) if recipe else {},
                          load_yaml(config_file) if config_file is not None else {}, overrides or {},
                          where=str(config_file) if config_file else "config")
