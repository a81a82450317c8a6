"""``glioseg preprocess DATA [DATA ...] --out CACHE [--format F] [--spacing X Y Z] [--workers N]``.

Several datasets make one cache (:mod:`glioseg.data.sources`): each case keeps its dataset, and
labels of another convention are converted to the cache's.
"""
from __future__ import annotations

import argparse

import numpy as np

from glioseg.data.cache import load_cache
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
from glioseg.data.sources import as_paths, discover_all
from glioseg.files import refuse_inside


def run(args: argparse.Namespace) -> int:
    paths = as_paths(args.data)
    refuse_inside(args.out, paths)
    sources = discover_all(paths, args.format)
    config = PreprocessConfig(target_spacing=tuple(args.spacing) if args.spacing else None)
    result = load_cache(preprocess_dataset(sources, args.out, config, workers=args.workers))
    shapes = np.array([result.meta(i)["shape"] for i in result.case_ids])
    size = sum(f.stat().st_size for f in result.path.rglob("*.npy"))
    first = sources.datasets[0]
    what = (f"{first.format} ({first.scheme.name} labels)" if sources.single
            else f"from {sources.describe()}; labels {sources.scheme.name}")
    print(f"cache {result.path}: {len(result)} cases, {what}, "
          f"median shape {np.median(shapes, axis=0).astype(int).tolist()}, {size / 2**20:.0f} MiB")
    return 0
