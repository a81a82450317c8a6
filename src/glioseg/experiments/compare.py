"""An arm of one experiment against an arm of another, paired per case (``glioseg experiment compare``).

An experiment's arms share one budget, so "does the released recipe gain from 4000 steps rather
than 2000?" pairs an arm of one experiment (``segresnet-long``) with an arm of another
(``segresnet-augment``). Such a pairing compares the two arms alone only where both trained each
fold model on the same cases: the two folders must hold the same cases in the same folds for every
seed compared, or the comparison is refused naming a case that moved. The statistics are the
report's (:func:`glioseg.experiments.stats.compare`: per region and metric of the reference side's
evaluation and their mean, the per-case differences ``B − A`` averaged over seeds, a percentile
bootstrap CI and the signed-rank p), next to what differs between the two arms' settings and what each cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glioseg.errors import InputError
from glioseg.experiments.plan import Plan, load_plan
from glioseg.experiments.records import RunResult
from glioseg.experiments.results import (Results, finished_runs, load_results, setting_differences, timed_on,
                                         trained_settings)
from glioseg.experiments.stats import Comparison, Key, case_means, compare, describe, paired_differences

# the pseudo-region of the mean over the evaluation's regions (per case, then over cases), the
# papers' "mean Dice"
MEAN = "mean"


@dataclass(frozen=True)
class Side:
    """One arm's finished runs in one experiment folder."""
    results: Results
    arm: str

    @property
    def plan(self) -> Plan:
        return self.results.plan

    @property
    def label(self) -> str:
        return f"{self.plan.spec.name}/{self.arm}"

    def runs(self) -> list[RunResult]:
        return self.results.of_arm(self.arm)

    def values(self, region: str, metric: str) -> dict[Key, float]:
        """(case, seed) → value; for :data:`MEAN`, the mean over the evaluation's regions where
        every region has a finite value."""
        if region != MEAN:
            return self.results.values(region, metric)[self.arm]
        per_region = [self.values(r, metric) for r in self.plan.spec.evaluation.regions]
        keys = set.intersection(*(set(v) for v in per_region))
        return {k: float(np.mean([v[k] for v in per_region])) for k in sorted(keys)
                if all(v[k] is not None and math.isfinite(v[k]) for v in per_region)}


def load_side(folder: Path, arm: str | None = None) -> Side:
    """The finished runs of ``arm`` (default: the spec's reference) in the experiment at ``folder``."""
    plan = load_plan(folder)
    arm = arm or plan.spec.reference
    finished_runs(plan, arm)           # an unknown arm, or one with no finished run, is an error here
    return Side(load_results(plan), arm)


def shared_seeds(a: Side, b: Side) -> list[int]:
    """The seeds both arms finished runs of, after checking that each puts the same cases in the
    same folds for them: otherwise their fold models trained on different cases."""
    seeds = sorted({r.seed for r in a.runs()} & {r.seed for r in b.runs()})
    if not seeds:
        raise InputError(f"{a.label} and {b.label} have no seed with finished runs in common")
    for seed in seeds:
        folds_a, folds_b = a.plan.folds[seed], b.plan.folds[seed]
        moved = sorted(c for c in folds_a.keys() | folds_b.keys() if folds_a.get(c) != folds_b.get(c))
        if moved:
            where = lambda folds: "absent" if moved[0] not in folds else f"in fold {folds[moved[0]]}"  # noqa: E731
            raise InputError(
                f"{a.plan.out} and {b.plan.out} split the cases differently for seed {seed}: {moved[0]} is "
                f"{where(folds_a)} in the first and {where(folds_b)} in the second ({len(moved)} cases differ), "
                "so their fold models trained on different cases; compare experiments with the same data "
                "and folds")
    return seeds


def setting_changes(a: Side, b: Side) -> dict[str, tuple]:
    """Setting → (A's value, B's value) where the arms' first runs were trained differently."""
    return setting_differences(*(trained_settings(side.runs()[0], side.label) for side in (a, b)))


@dataclass(frozen=True)
class Paired:
    """B against A in one region and metric: the comparison, each side described over the paired
    (case, seed) values, and on how many cases B's value is higher and lower."""
    comparison: Comparison
    a: dict
    b: dict
    higher: int
    lower: int


def compare_sides(a: Side, b: Side) -> list[Paired]:
    """Per region of A's evaluation, then :data:`MEAN`, and per metric (A the reference), in that order."""
    if a.plan.out.resolve() == b.plan.out.resolve() and a.arm == b.arm:
        raise InputError(f"{a.label}: an arm compared with itself")
    seeds = set(shared_seeds(a, b))
    ev, out = a.plan.spec.evaluation, []
    for region in (*ev.regions, MEAN):
        for metric in ev.metrics:
            va, vb = ({k: v for k, v in side.values(region, metric).items() if k[1] in seeds} for side in (a, b))
            # keyed A and B: two copies of one experiment have the same labels
            (comparison,) = compare({"A": va, "B": vb}, "A", region, metric, ev.bootstrap, a.plan.spec.folds.seed,
                                    ev.alpha)
            differences = paired_differences(vb, va)
            units = case_means(differences)
            out.append(Paired(comparison, describe([va[k] for k in differences]), describe([vb[k] for k in differences]),
                              int((units > 0).sum()), int((units < 0).sum())))
    return out


def _cost_line(side: Side) -> str:
    """Steps and, per device the runs were timed on, their median s/step and training time."""
    runs = side.runs()
    steps = "/".join(map(str, sorted({r.cost.steps for r in runs})))
    per_device = "; ".join(
        f"{t['runs']} on {device}: median {_minutes(t['train_s'])} of training"
        + (f", {t['s_per_step']:.2f} s a step" if t["s_per_step"] is not None else "")
        for device, t in timed_on(runs).items())
    return f"{side.label}: {len(runs)} runs of {steps} steps ({per_device})"


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.0f} min"


def sections(a: Side, b: Side) -> list[tuple]:
    """The comparison as report parts (``glioseg.experiments.report.to_markdown`` writes them)."""
    rows = compare_sides(a, b)
    changes = setting_changes(a, b)
    digits = lambda metric: 3 if metric == "dice" else 2  # noqa: E731
    num = lambda v, metric: "n/a" if v is None else f"{v:.{digits(metric)}f}"  # noqa: E731
    body = []
    for row in rows:
        c, d = row.comparison, digits(row.comparison.metric)
        body.append([c.region, c.metric, f"{num(row.a['mean'], c.metric)} ({num(row.a['median'], c.metric)})",
                     f"{num(row.b['mean'], c.metric)} ({num(row.b['median'], c.metric)})",
                     f"{c.delta:+.{d}f} [{c.ci[0]:+.{d}f}, {c.ci[1]:+.{d}f}]", f"{row.higher} / {row.lower}",
                     f"{c.p:.2g}", c.verdict])
    header = ["region", "metric", f"{a.label} mean (median)", f"{b.label} mean (median)",
              "B − A [95 % bootstrap CI]", "cases B higher / lower", "signed-rank p", "verdict"]
    differ = ", ".join(f"{k} {x!r} → {y!r}" for k, (x, y) in changes.items()) or "none"
    n_cases = rows[0].comparison.n_cases if rows else 0
    return [("h1", f"{b.label} against {a.label}"),
            ("p", f"Paired per case over {n_cases} held-out cases (the same folds in both experiments; "
                  f"each case's differences averaged over its seeds). Settings that differ: {differ}."),
            ("table", header, body),
            ("p", "Cost: " + "; ".join(_cost_line(side) for side in (a, b)) + "." + _timed_apart(a, b))]


def _timed_apart(a: Side, b: Side) -> str:
    """A warning where the two sides' runs were timed on different devices."""
    same = set(timed_on(a.runs())) == set(timed_on(b.runs()))
    return "" if same else " The two sides were timed on different machines: their times do not compare."
