"""A released model built the way a maintainer builds one: a tiny training run, then the release builder.

The run is the trainer tests' tiny run (SegResNet with 8 filters, 16³ patches, 6 steps on four
48×48×40 phantoms); the release goes into a temporary ``released/`` folder, never the package's.
An ensemble release (:func:`make_ensemble`) adds a second tiny run of another seed (another
split) as member fold1.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from glioseg.data.phantom import write_dataset
from glioseg.inference import released
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


ENSEMBLE = "tiny-ensemble"


@dataclass(frozen=True)
class TinyEnsemble:
    root: Path
    name: str
    checkpoints: tuple[Path, ...]   # in fold order
    data: Path
    results: Path
    held_out_by: dict               # case → fold label, from the members' splits


def ensemble_results(checkpoints) -> dict:
    """The fixture's results with each member's held-out (validation) cases as its fold's, per-case Dice and medians."""
    held = {}
    for k, checkpoint in enumerate(checkpoints):
        split = RunFiles(Path(checkpoint).parent).read_split()
        held.update({case: f"fold{k}" for case in split["val"] if case not in held})
    per_case = {case: 0.2 + 0.2 * i for i, case in enumerate(sorted(held))}
    dice = {r: {"mean": sum(per_case.values()) / len(per_case), "sd": 0.1, "median": 0.42, "n": len(per_case),
                "per_case": per_case} for r in ("WT", "TC", "ET")}
    return {**RESULTS, "method": "2-fold test fixture", "dice": dice, "held_out_by": held}


def make_ensemble(folder: Path, tiny) -> TinyEnsemble:
    """A 2-member release: the tiny release's run (fold0) and a run of seed 8 on the same phantoms
    (fold1), stored in fp32 (a threshold no Dice reaches) so that its members are the checkpoints' weights."""
    code = run_inprocess(train_args(tiny.data, folder / "run1", write_config(folder, seed=8)))
    assert code == 0
    checkpoints = (tiny.checkpoint, RunFiles(folder / "run1").best)
    data = ensemble_results(checkpoints)
    results = folder / "results.json"
    results.write_text(json.dumps(data))
    case = sorted(p for p in tiny.data.iterdir() if p.is_dir())[0]
    build_release(checkpoints, ENSEMBLE, results, [case], root=folder / "released", fp16_threshold=1.01)
    return TinyEnsemble(folder / "released", ENSEMBLE, checkpoints, tiny.data, results, data["held_out_by"])


def make_release(folder: Path, fp16_threshold: float | None = None) -> TinyRelease:
    data, checkpoint = train_tiny(folder)
    results = folder / "results.json"
    results.write_text(json.dumps(RESULTS))
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    extra = {} if fp16_threshold is None else {"fp16_threshold": fp16_threshold}
    build_release(checkpoint, NAME, results, [case], root=folder / "released", **extra)
    return TinyRelease(folder / "released", NAME, checkpoint, data, results)


def install_copy(root: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a released/ folder that a test may damage, installed as the package's."""
    copy = tmp_path / "released"
    shutil.copytree(root, copy)
    monkeypatch.setattr(released, "package_root", lambda: copy)
    return copy
