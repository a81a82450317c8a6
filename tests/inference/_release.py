"""A released model built the way a maintainer builds one: a tiny training run, then the release builder.

The run is the trainer tests' tiny run (SegResNet with 8 filters, 16³ patches, 6 steps on four
48×48×40 phantoms); the release goes into a temporary ``released/`` folder, never the package's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glioseg.data.phantom import write_dataset
from glioseg.inference.release_build import build_release
from glioseg.run_io import RunFiles

from ..training._runs import run_inprocess, train_args, write_config

NAME = "tiny-phantoms"
RESULTS = {"method": "validation on 1 held-out phantom (test fixture)", "hardware": "the test machine",
           "dice": {"WT": {"mean": 0.5, "sd": 0.1, "n": 2, "per_case": {"a": 0.4, "b": 0.6}},
                    "TC": {"mean": 0.4, "sd": 0.2, "n": 2}, "ET": {"mean": 0.3}},
           "commands": ["glioseg train --config tiny.yaml"], "notes": "| recipe | Dice |\n|---|---|\n| x | 0.5 |"}


@dataclass(frozen=True)
class TinyRelease:
    root: Path          # the released/ folder (index.json + NAME/)
    name: str
    checkpoint: Path
    data: Path          # the phantom dataset (BraTS layout, with labels)
    results: Path


def train_tiny(folder: Path) -> tuple[Path, Path]:
    """(phantom dataset, best.pt) of a 6-step run."""
    data = folder / "phantoms"
    write_dataset(data, cases=4, seed=0, shape=(48, 48, 40))
    code = run_inprocess(train_args(data, folder / "run", write_config(folder)))
    assert code == 0
    return data, RunFiles(folder / "run").best


def make_release(folder: Path, fp16_threshold: float | None = None) -> TinyRelease:
    data, checkpoint = train_tiny(folder)
    results = folder / "results.json"
    results.write_text(json.dumps(RESULTS))
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    extra = {} if fp16_threshold is None else {"fp16_threshold": fp16_threshold}
    build_release(checkpoint, NAME, results, [case], root=folder / "released", **extra)
    return TinyRelease(folder / "released", NAME, checkpoint, data, results)
