"""Settings of a ``glioseg train`` run: recipe, config file and options, or those of a resumed run."""
from __future__ import annotations

from pathlib import Path

from glioseg.config import load_yaml, to_dict
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


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"block.name": value}``."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trained_differences(saved: dict, config: TrainConfig, where: str) -> tuple[TrainConfig, dict[str, tuple]]:
    """A run's settings as it trained (``saved``: its config.yaml or result record, read by
    :func:`upgrade_saved`) and, per setting that ``config`` gives otherwise, (as trained, as
    ``config`` gives). Settings the run predates are not compared: their value is what it trained
    with, and a spec that resolves them at a newer version's default is no edit of the run."""
    saved = {k: v for k, v in saved.items() if k != "versions"}
    before = TrainConfig.from_dict(saved, where)
    then, now = to_dict(before), to_dict(config)
    old, new = _leaves(then), _leaves(now)
    # the old precision_options form spreads its block differently: compare all of it
    predates = set() if "precision_options" in saved else old.keys() - _leaves(saved).keys()
    names = dict.fromkeys(k.split(".")[0] for k in dict.fromkeys([*old, *new])
                          if k not in predates and old.get(k) != new.get(k))
    return before, {k: (then.get(k), now.get(k)) for k in names}


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
