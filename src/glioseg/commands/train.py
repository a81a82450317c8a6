"""``glioseg train --data DATA --out RUN [--recipe R] [--config FILE] [options] [--resume]``."""
from __future__ import annotations

import argparse
import json
import logging

from glioseg.training.settings import train_config
from glioseg.training.trainer import train

log = logging.getLogger(__name__)


def overrides(args: argparse.Namespace) -> dict:
    """The settings given as options (None where not given: the recipe or config file decides)."""
    return {
        "model": args.model, "precision": args.precision, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "patch": tuple(args.patch) if args.patch else None,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "val_every": args.val_every,
        "val_fraction": args.val_fraction, "workers": args.workers, "device": args.device,
        "checkpoint_every": args.checkpoint_every,
    }


def run(args: argparse.Namespace) -> int:
    config = train_config(args.out, overrides(args), args.recipe, args.config, args.resume)
    summary = train(config, args.data, args.out, resume=args.resume, data_format=args.format,
                    cache=args.cache, allow_other_data=args.allow_other_data)
    log.info("precision summary: %s", json.dumps(summary))
    return 0
