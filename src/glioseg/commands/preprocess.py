"""``glioseg preprocess DATA --out CACHE [--format F] [--spacing X Y Z] [--workers N]``."""
from __future__ import annotations

import argparse

import numpy as np

from glioseg.data.cache import load_cache
from glioseg.data.formats import discover
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
from glioseg.files import refuse_inside


def run(args: argparse.Namespace) -> int:
    refuse_inside(args.out, [args.data])
    dataset = discover(args.data, args.format)
    config = PreprocessConfig(target_spacing=tuple(args.spacing) if args.spacing else None)
    result = load_cache(preprocess_dataset(dataset, args.out, config, workers=args.workers))
    shapes = np.array([result.meta(i)["shape"] for i in result.case_ids])
    size = sum(f.stat().st_size for f in result.path.rglob("*.npy"))
    print(f"cache {result.path}: {len(result)} cases, {dataset.format} ({dataset.scheme.name} labels), "
          f"median shape {np.median(shapes, axis=0).astype(int).tolist()}, {size / 2**20:.0f} MiB")
    return 0
