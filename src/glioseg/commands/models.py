"""``glioseg models [--patch X Y Z] [--out-channels K] [--json FILE] [--released]``.

The registered networks with parameters and FLOPs, or (``--released``) the trained models
shipped with glioseg with their Dice, size and the state of their files.
"""
from __future__ import annotations

import argparse
import logging

from glioseg.data.labels import REGIONS
from glioseg.files import write_json
from glioseg.inference import released
from glioseg.models.registry import describe, list_models

log = logging.getLogger(__name__)


def _networks(patch: tuple[int, ...], out_channels: int) -> list[dict]:
    rows = [describe(name, patch, out_channels=out_channels) for name in list_models()]
    print(f"{'name':22s} {'params':>11s} {'GFLOP':>8s}  description "
          f"(4 -> {out_channels} channels, FLOPs of one {'x'.join(map(str, patch))} patch)")
    for r in rows:
        print(f"{r['name']:22s} {r['params']:>11,d} {r['flops'] / 1e9:8.1f}  {r['description']}")
    return [{k: r[k] for k in ("name", "params", "flops")} for r in rows]


def _dice_cell(dice: dict, region: str) -> str:
    score = dice.get(region) or {}
    if score.get("mean") is None:
        return "n/a"
    return f"{score['mean']:.3f}±{score['sd']:.3f}" if score.get("sd") is not None else f"{score['mean']:.3f}"


def _print_released(rows: list[dict]) -> None:
    if not rows:
        print(f"no released models in this installation ({released.package_root()})")
        return
    print(f"{'name':24s} {'network':12s} {'members':>7s} {'params':>10s} {'weights':>8s} {'size MB':>8s}  "
          + "  ".join(f"{'Dice ' + r:14s}" for r in REGIONS) + "  status")
    for r in rows:
        dice = "  ".join(f"{_dice_cell(r['dice'], region):14s}" for region in REGIONS)
        print(f"{r['name']:24s} {r['model']:12s} {r['members']:>7d} {r['params']:>10,d} {r['dtype']:>8s} "
              f"{r['bytes'] / 1e6:8.1f}  {dice}  {r['status']}")
    print("members: models averaged by predict --model (an ensemble of fold models, or 1); params: per member. "
          "Dice: mean ± sd as measured for the model card (see MODEL_CARD.md in each model's folder: "
          f"{released.package_root()})")


def run(args: argparse.Namespace) -> int:
    if args.released:
        rows = released.list_released()
        if args.json is not None:
            log.info("wrote %s", write_json(args.json, rows, indent=2))
        _print_released(rows)
    else:
        rows = _networks(tuple(args.patch), args.out_channels)
        if args.json is not None:
            log.info("wrote %s", write_json(args.json, rows, indent=2))
    return 0
