"""What a run trains on: the preprocessed cache, a seeded train/validation split, site ids.

A raw dataset folder (or several: :mod:`glioseg.data.sources`) is preprocessed into
``<run>/cache`` first (or into ``--cache``); a folder that already is a glioseg cache is used as it is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from glioseg.data.sources import as_paths, discover_all
from glioseg.data.preprocess import PreprocessConfig, load_cache, preprocess_dataset
from glioseg.errors import InputError
from glioseg.run_io import RunFiles
from glioseg.training import data_identity, distributed as dist_utils

log = logging.getLogger(__name__)


def make_split(case_ids: list[str], seed: int, val_fraction: float) -> dict:
    """Deterministic split by seed: the same ids, seed and fraction give the same split anywhere."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids))) if len(ids) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(ids) > 1 else 0), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    return {"seed": seed, "val_fraction": val_fraction,
            "train": [c for c in ids if c not in set(val)], "val": val}


def site_index(sites: list[str | None]) -> dict[str, int]:
    """Stable index per known acquisition site (sorted names); unknown sites get none."""
    return {name: i for i, name in enumerate(sorted({s for s in sites if s}))}


@dataclass
class TrainingData:
    cache: object
    split: dict
    sites: dict[str, int]

    @property
    def scheme(self):
        return self.cache.scheme

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.cache.channels)

    @property
    def val_ids(self) -> list[str]:
        return list(self.split["val"])

    def site_id(self, case_id: str) -> int:
        return self.sites.get(self.cache.site(case_id) or "", -1)

    def _volumes(self, ids: list[str]) -> list[tuple]:
        return [(c, self.cache.image(c), self.cache.label(c), self.site_id(c)) for c in ids]

    def spacing(self) -> tuple[float, float, float]:
        """The median voxel spacing (mm, RAS axes, as the network sees them) of the training cases."""
        spacings = np.array([self.cache.meta(c)["spacing"] for c in self.split["train"]], dtype=np.float64)
        return tuple(float(v) for v in np.median(spacings, axis=0))

    def train_volumes(self) -> list[tuple]:
        return self._volumes(self.split["train"])

    def val_volumes(self) -> list[tuple]:
        return [(c, img, lab, sid if sid >= 0 else None) for c, img, lab, sid in self._volumes(self.val_ids)]


def data_paths(data) -> list[Path]:
    """``--data``: one path or several (a list); a glioseg cache only alone."""
    paths = as_paths(data)
    caches = [p for p in paths if (p / "cache.json").is_file()]
    if caches and len(paths) > 1:
        raise InputError(f"{caches[0]} is a glioseg cache: a cache is given alone as --data; to train on several "
                         "datasets give their folders (one cache is built over all of them)")
    return paths


def ensure_cache(data, out: Path, data_format: str, cache_dir: Path | None,
                 info: dist_utils.DistInfo, check: Callable[[dict], None] | None = None):
    """The cache for ``data`` (a path, or a list of dataset paths): ``data`` itself when it is a
    cache, else built over every dataset (by rank 0) and loaded.

    ``check`` (on resume) sees the data's identity before anything is written: a raw dataset is
    hashed before the run's cache is brought up to date with it.
    """
    paths = data_paths(data)
    if (paths[0] / "cache.json").is_file():
        cache = load_cache(paths[0])
        if check is not None:
            check(data_identity.from_cache(cache))
        return cache
    target = Path(cache_dir) if cache_dir else Path(out) / "cache"
    config = PreprocessConfig()
    sources = discover_all(paths, data_format)   # case ids checked unique across them, before any work
    if check is not None:
        check(data_identity.from_dataset(sources, config.to_dict()))
    if info.is_main:
        preprocess_dataset(sources, target, config)
    dist_utils.barrier(info)
    return load_cache(target)


def prepare_data(data, out: Path, config, data_format: str, cache_dir: Path | None,
                 info: dist_utils.DistInfo, resume: bool = False, allow_other_data: bool = False) -> TrainingData:
    """The run's data; on ``resume`` it must be the data the run started on (``RUN/data.json``)
    unless ``allow_other_data``, and its identity is recorded in the run folder either way."""
    check = partial(data_identity.check_resume, out, allow_other_data=allow_other_data) if resume else None
    cache = ensure_cache(data, out, data_format, cache_dir, info, check)
    if info.is_main:
        data_identity.record(out, data_identity.from_cache(cache))
    files = RunFiles(out)
    saved = files.split
    split = files.read_split() or make_split(list(cache.case_ids), config.seed, config.val_fraction)
    missing = sorted(set(split["train"] + split["val"]) - set(cache.case_ids))
    if missing:
        raise InputError(f"{saved}: the split names cases the data does not have: {', '.join(missing)}")
    sites = site_index([cache.site(c) for c in split["train"]])
    log.info("%d training and %d validation cases; sites %s", len(split["train"]), len(split["val"]), sites)
    return TrainingData(cache, split, sites)
