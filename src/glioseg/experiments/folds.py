"""Stratified k-fold assignment of cases: deterministic, every case held out exactly once.

Cases are grouped by stratum (acquisition site and grade, ``?`` where unknown; of several datasets,
a case of unknown site is stratified by its dataset, so each dataset is spread over the folds); within each
stratum, in sorted order of strata, the cases are shuffled by a seeded NumPy generator and
dealt to the folds in turn, the deal continuing from one stratum to the next. So every fold
gets each site's cases as evenly as the counts allow (within one), and fold sizes differ by at
most one. The training cases of a fold are split again (``training.datasource.make_split``)
into the cases the trainer fits and the ones its validation (best checkpoint) scores: the
held-out cases never influence training. An arm may train on fewer of them (``train_cases``, for a
learning curve against the number of cases): the first N of one seeded order per fold that spreads
each stratum evenly, so the subsets of two arms are nested and the held-out cases are the same.
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


def nested_order(cases: Sequence[str], strata: dict[str, str], seed: Sequence[int]) -> list[str]:
    """``cases`` in one seeded order whose every prefix holds each stratum in proportion (within
    one): systematic sampling, each stratum's shuffled cases spaced evenly over [0, 1) from a random
    start. The first N of it are a stratified subset of N, and a subset of the first M > N."""
    rng = np.random.default_rng(list(seed))
    by_stratum: dict[str, list[str]] = {}
    for case in sorted(cases):
        by_stratum.setdefault(strata.get(case, UNKNOWN), []).append(case)
    keyed = []
    for stratum in sorted(by_stratum):
        members, start = by_stratum[stratum], rng.random()
        for rank, i in enumerate(rng.permutation(len(members))):
            keyed.append(((rank + start) / len(members), stratum, members[i]))
    return [case for _, _, case in sorted(keyed)]


def fold_split(assignment: dict[str, int], fold: int, seed: int, val_fraction: float,
               train_cases: int | None = None, strata: dict[str, str] | None = None) -> dict:
    """The run's ``split.json``: ``test`` (held out), and ``train`` / ``val`` for the trainer; with
    ``train_cases``, from that many of the fold's other cases (the rest listed as ``unused``)."""
    test = sorted(c for c, f in assignment.items() if f == fold)
    pool = sorted(c for c, f in assignment.items() if f != fold)
    subset = {}
    if train_cases is not None:
        if not 1 <= train_cases <= len(pool):
            raise InputError(f"train_cases {train_cases}: fold {fold} has {len(pool)} training cases")
        kept = nested_order(pool, strata or {}, (seed, fold))[:train_cases]
        subset = {"train_cases": train_cases, "unused": sorted(set(pool) - set(kept))}
        pool = kept
    inner = make_split(pool, seed, val_fraction)
    return {**inner, "fold": fold, "test": test, **subset}


def balance(assignment: dict[str, int], strata: dict[str, str], k: int) -> dict[str, list[int]]:
    """Stratum → cases per fold (what the plan and the report show)."""
    counts = Counter((strata[c], f) for c, f in assignment.items())
    return {s: [counts[(s, f)] for f in range(k)] for s in sorted(set(strata.values()))}
