"""Stratified k-fold assignment of cases: deterministic, every case held out exactly once.

Cases are grouped by stratum (acquisition site and grade, ``?`` where unknown; of several datasets,
a case of unknown site is stratified by its dataset, so each dataset is spread over the folds); within each
stratum, in sorted order of strata, the cases are shuffled by a seeded NumPy generator and
dealt to the folds in turn, the deal continuing from one stratum to the next. So every fold
gets each site's cases as evenly as the counts allow (within one), and fold sizes differ by at
most one. The training cases of a fold are split again (``training.datasource.make_split``)
into the cases the trainer fits and the ones its validation (best checkpoint) scores: the
held-out cases never influence training.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from glioseg.errors import InputError
from glioseg.training.datasource import make_split

UNKNOWN = "?"


def read_grades(path: Path) -> dict[str, str]:
    """``case,grade`` rows of a CSV file → {case: grade}; errors name the file."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the grades file: {exc}") from exc
    if not {"case", "grade"} <= set(reader.fieldnames or []):
        raise InputError(f"{path}: a grades file needs the columns case and grade; found {reader.fieldnames}")
    return {r["case"]: r["grade"] for r in rows if r["grade"]}


def stratum_of(site: str | None, grade: str | None, dataset: str | None = None) -> str:
    """``site/grade``; ``dataset`` (given with several datasets only) stands in for an unknown site."""
    return f"{site or dataset or UNKNOWN}/{grade or UNKNOWN}"


def assign_folds(strata: dict[str, str], k: int, seed: Sequence[int]) -> dict[str, int]:
    """Case → fold (0 .. k-1), stratified by ``strata`` (case → stratum), drawn from ``seed``."""
    if not 2 <= k <= len(strata):
        raise InputError(f"{k} folds need at least {k} cases and k >= 2; there are {len(strata)} cases")
    rng = np.random.default_rng(list(seed))
    by_stratum: dict[str, list[str]] = {}
    for case in sorted(strata):
        by_stratum.setdefault(strata[case], []).append(case)
    assignment, dealt = {}, int(rng.integers(k))
    for stratum in sorted(by_stratum):
        cases = by_stratum[stratum]
        for i in rng.permutation(len(cases)):
            assignment[cases[i]] = dealt % k
            dealt += 1
    return assignment


def fold_split(assignment: dict[str, int], fold: int, seed: int, val_fraction: float) -> dict:
    """The run's ``split.json``: ``test`` (held out), and ``train`` / ``val`` for the trainer."""
    test = sorted(c for c, f in assignment.items() if f == fold)
    inner = make_split([c for c, f in assignment.items() if f != fold], seed, val_fraction)
    return {**inner, "fold": fold, "test": test}


def balance(assignment: dict[str, int], strata: dict[str, str], k: int) -> dict[str, list[int]]:
    """Stratum → cases per fold (what the plan and the report show)."""
    counts = Counter((strata[c], f) for c, f in assignment.items())
    return {s: [counts[(s, f)] for f in range(k)] for s in sorted(set(strata.values()))}
