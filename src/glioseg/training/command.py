"""``glioseg train``: settings from recipe, config file and options; then the trainer."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from glioseg.config import load_yaml
from glioseg.training.recipe import TrainConfig, build_config, merge_settings, recipe_dict, upgrade_saved
from glioseg.training.trainer import train

log = logging.getLogger(__name__)

# Options that may change when a run is resumed; anything else must stay as the run began.
RESUMABLE = ("epochs", "workers", "device")


def default_recipe(model: str | None) -> str:
    """SegResNet trains with its published recipe; DALight-3D and its baselines with the paper's."""
    return "segresnet-brats" if (model or "segresnet") == "segresnet" else "dalight3d-paper"


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {
        "model": args.model, "precision": args.precision, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "patch": tuple(args.patch) if args.patch else None,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "val_every": args.val_every,
        "val_fraction": args.val_fraction, "workers": args.workers, "device": args.device,
        "checkpoint_every": args.checkpoint_every,
    }


def resumed_config(out: Path, overrides: dict, file_settings: dict | None = None) -> TrainConfig:
    """The run's saved configuration with the resumable ``overrides`` applied.

    ``file_settings`` (from ``--recipe`` / ``--config`` given again) and the command-line
    ``overrides`` must agree with the run's settings, except the resumable ones, which change
    only from the command line: a resumed run never silently trains with other settings.
    """
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{out}: --resume needs a started run there, but {path.name} is missing")
    saved = upgrade_saved(load_yaml(path))
    saved.pop("versions", None)
    given = {k: v for k, v in (file_settings or {}).items() if k not in RESUMABLE}
    given = merge_settings(given, {k: v for k, v in overrides.items() if v is not None})
    where = str(path)
    # compare as a fresh run would build them (YAML lists vs tuples, nested settings)
    base, asked = TrainConfig.from_dict(saved, where), TrainConfig.from_dict(merge_settings(saved, given), where)
    changed = sorted(k for k in given if k not in RESUMABLE and getattr(asked, k) != getattr(base, k))
    if changed:
        raise ValueError(f"{out}: --resume continues the run as it was configured; only "
                         f"{', '.join('--' + k for k in RESUMABLE)} may change, not {', '.join(changed)}")
    if overrides.get("epochs") is not None and overrides["epochs"] < saved["epochs"]:
        raise ValueError(f"{out}: --epochs {overrides['epochs']} is fewer than the run's {saved['epochs']}")
    saved.update({k: v for k, v in overrides.items() if k in RESUMABLE and v is not None})
    return TrainConfig.from_dict(saved, where)


def file_settings(args: argparse.Namespace) -> dict:
    """Settings from ``--recipe`` and ``--config`` as given (the recipe only when named)."""
    data = recipe_dict(args.recipe) if args.recipe else {}
    if args.config is not None:
        data = merge_settings(data, load_yaml(args.config))
    return data


def run_cli(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.resume:
        config = resumed_config(args.out, overrides, file_settings(args))
    else:
        config = build_config(args.recipe or default_recipe(args.model), args.config, overrides)
    summary = train(config, args.data, args.out, resume=args.resume, data_format=args.format,
                    cache=args.cache)
    log.info("precision summary: %s", json.dumps(summary))
    return 0
