"""Settings of a ``glioseg train`` run: recipe, config file and options, or those of a resumed run."""
from __future__ import annotations

from pathlib import Path

from glioseg.config import load_yaml
from glioseg.errors import InputError
from glioseg.run_io import RunFiles
from glioseg.training.recipe import (TrainConfig, build_config, default_recipe, layered_config, merge_settings,
                                    recipe_dict, upgrade_saved)

# Options that may change when a run is resumed; anything else must stay as the run began.
RESUMABLE = ("epochs", "workers", "device")


def resumed_config(out: Path, overrides: dict, file_settings: dict | None = None) -> TrainConfig:
    """The run's saved configuration with the resumable ``overrides`` applied.

    ``file_settings`` (from ``--recipe`` / ``--config`` given again) and the command-line
    ``overrides`` must agree with the run's settings, except the resumable ones, which change
    only from the command line: a resumed run never silently trains with other settings.
    """
    files = RunFiles(out)
    path = files.config
    if not path.is_file():
        raise InputError(f"{out}: --resume needs a started run there, but {path.name} is missing")
    saved = upgrade_saved(files.read_config())
    saved.pop("versions", None)
    given = {k: v for k, v in (file_settings or {}).items() if k not in RESUMABLE}
    given = merge_settings(given, {k: v for k, v in overrides.items() if v is not None})
    where = str(path)
    # compare as a fresh run would build them (YAML lists vs tuples, nested settings)
    base, asked = TrainConfig.from_dict(saved, where), layered_config(saved, given, where=where)
    changed = sorted(k for k in given if k not in RESUMABLE and getattr(asked, k) != getattr(base, k))
    if changed:
        raise InputError(f"{out}: --resume continues the run as it was configured; only "
                         f"{', '.join('--' + k for k in RESUMABLE)} may change, not {', '.join(changed)}")
    if overrides.get("epochs") is not None and overrides["epochs"] < saved["epochs"]:
        raise InputError(f"{out}: --epochs {overrides['epochs']} is fewer than the run's {saved['epochs']}")
    return layered_config(saved, {k: v for k, v in overrides.items() if k in RESUMABLE}, where=where)


def file_settings(recipe: str | None, config: Path | None) -> dict:
    """Settings from ``--recipe`` and ``--config`` as given (the recipe only when named)."""
    data = recipe_dict(recipe) if recipe else {}
    if config is not None:
        data = merge_settings(data, load_yaml(config))
    return data


def train_config(out: Path, overrides: dict, recipe: str | None = None, config: Path | None = None,
                 resume: bool = False) -> TrainConfig:
    """The run's settings: those it was started with when resumed, else the recipe (by default the
    model's), then the ``config`` file, then the ``overrides`` that are not None."""
    if resume:
        return resumed_config(out, overrides, file_settings(recipe, config))
    return build_config(recipe or default_recipe(overrides.get("model")), config, overrides)
