"""The result files of an experiment as tables: scores per arm, comparisons, cost, curves.

Only finished runs (their ``DIR/results/...json``) count; the tables say how many runs of each
arm are in, so a report of an experiment still under way is honest about it.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from glioseg.experiments.plan import Plan, Run
from glioseg.experiments.stats import Comparison, Key, compare, describe, seed_means

log = logging.getLogger(__name__)
from glioseg.config import to_dict
from glioseg.errors import InputError
from glioseg.experiments.records import RunResult
from glioseg.training.recipe import TrainConfig
from glioseg.training.settings import trained_differences


@dataclass(frozen=True)
class Results:
    plan: Plan
    runs: dict[Run, RunResult]   # finished runs → their result file

    def arms(self) -> list[str]:
        return [a for a in self.plan.resolved.arm_names if a not in self.plan.not_run]

    def of_arm(self, arm: str) -> list[RunResult]:
        return [r for run, r in self.runs.items() if run.arm == arm]

    def values(self, region: str, metric: str) -> dict[str, dict[Key, float]]:
        """arm → (case, seed) → value of ``metric`` in ``region`` (None where undefined)."""
        return {arm: {(row["case"], r.seed): row[metric] for r in self.of_arm(arm)
                      for row in r.rows if row["region"] == region}
                for arm in self.arms()}

    def resolved_otherwise(self) -> dict[str, dict[str, tuple]]:
        """Finished runs whose settings the spec would now resolve differently (another version's
        recipe or defaults): run key → setting → (as trained, as the spec resolves now)."""
        out = {}
        for run, result in self.runs.items():
            _, changed = trained_differences(result.config, self.plan.resolved.config(run.arm, run.seed),
                                             str(self.plan.result_path(run)))
            if changed:
                out[run.key] = changed
        return out


def trained_settings(result: RunResult, where: str) -> dict:
    """The settings a finished run trained with, as this version reads them (plain values)."""
    return to_dict(TrainConfig.from_dict(result.config, where))


def setting_differences(first: dict, second: dict) -> dict[str, tuple]:
    """Setting → (first's value, second's value) for every setting the two give differently."""
    return {k: (first.get(k), second.get(k)) for k in dict.fromkeys([*first, *second])
            if first.get(k) != second.get(k)}


def describe_changes(changed: dict[str, dict[str, tuple]]) -> str:
    """``arm/fold0-seed0 (lr 0.001 → 0.0002), ...``: the first runs and settings, the rest counted."""
    shown = [f"{key} ({', '.join(f'{k} {a!r} → {b!r}' for k, (a, b) in list(diff.items())[:3])})"
             for key, diff in list(changed.items())[:3]]
    more = f" and {len(changed) - 3} more runs" if len(changed) > 3 else ""
    return ", ".join(shown) + more


def load_results(plan: Plan) -> Results:
    """The finished runs' results. Runs trained with settings the spec no longer resolves to are
    reported as they were trained, with a warning naming them (never silently mixed)."""
    runs = {}
    for run in plan.runs:
        path = plan.result_path(run)
        if path.is_file():
            runs[run] = RunResult.read(path)
    results = Results(plan, runs)
    changed = results.resolved_otherwise()
    if changed:
        log.warning("%s: %d finished runs were trained with settings this version resolves the spec to "
                    "differently; their results are reported as trained: %s", plan.out, len(changed),
                    describe_changes(changed))
    return results


def finished_runs(plan: Plan, arm: str) -> list[tuple[Run, RunResult]]:
    """``arm``'s finished runs with their results, by seed then fold; none finished is an error."""
    runs = sorted(((run, r) for run, r in load_results(plan).runs.items() if run.arm == arm),
                  key=lambda item: (item[0].seed, item[0].fold))
    if not runs:
        raise InputError(f"{plan.out}: arm {arm!r} has no finished run (arms: {', '.join(plan.resolved.arm_names)})")
    return runs


def arm_scores(results: Results) -> list[dict]:
    """Per arm, region and metric: statistics over (case, seed) values and over the seed means."""
    ev = results.plan.spec.evaluation
    rows = []
    for region in ev.regions:
        for metric in ev.metrics:
            for arm, values in results.values(region, metric).items():
                over_seeds = describe(list(seed_means(values).values()))
                rows.append({"arm": arm, "region": region, "metric": metric, **describe(list(values.values())),
                             "seeds": over_seeds["n"], "seed_sd": over_seeds["sd"],
                             "runs": len(results.of_arm(arm))})
    return rows


def comparisons(results: Results) -> list[Comparison]:
    spec = results.plan.spec
    ev = spec.evaluation
    if spec.reference in results.plan.not_run:
        return []
    return [c for region in ev.regions for metric in ev.metrics
            for c in compare(results.values(region, metric), spec.reference, region, metric,
                             ev.bootstrap, spec.folds.seed, ev.alpha)]


def time_to_target(curve: list[dict], target: float) -> tuple[float | None, int | None]:
    """Training seconds and steps until the mean validation Dice (WT, TC, ET) first reaches ``target``."""
    elapsed = 0.0
    for row in curve:
        elapsed += row.get("seconds") or 0.0
        dice = [row.get(f"val_dice_{r}") for r in ("wt", "tc", "et")]
        if all(d is not None for d in dice) and float(np.mean(dice)) >= target:
            return elapsed, int(row["step"])
    return None, None


def _precision_steps(done: list[RunResult]) -> list[str]:
    """Steps per precision, the mean over the arm's runs (``fp32 50``, ``bf16 250``), in ladder order."""
    totals: dict[str, float] = {}
    for r in done:
        for level, n in r.steps_per_precision().items():
            totals[level] = totals.get(level, 0) + n
    return [f"{level} {n / len(done):.0f}" for level, n in totals.items() if n]


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def device_of(run: RunResult) -> str:
    """What a finished run was timed on (:attr:`RunResult.device`)."""
    return run.device


def devices(results: Results) -> list[str]:
    """The devices the finished runs were timed on, most runs first (the first is the main one)."""
    return [d for d, _ in Counter(device_of(r) for r in results.runs.values()).most_common()]


def timed_on(done: list[RunResult]) -> dict[str, dict]:
    """Per device: the runs timed on it, their median s/step and training time."""
    out = {}
    for device in dict.fromkeys(device_of(r) for r in done):
        c = [r.cost for r in done if device_of(r) == device]
        out[device] = {"runs": len(c), "s_per_step": _median([x.s_per_step for x in c]),
                       "train_s": _median([x.train_wall_s for x in c])}
    return out


def cost(results: Results) -> list[dict]:
    """Per arm: parameters, FLOPs, s/step, peak MiB, training time, time to the target Dice.

    Times compare only between runs on one device: ``timed_on`` gives them per device, and
    ``s_per_step`` and ``train_s`` are those of the experiment's main device (None for an arm
    with no run there), so that an experiment continued on another machine does not average the two.
    """
    target = results.plan.spec.evaluation.target_dice
    main = next(iter(devices(results)), None)
    rows = []
    for arm in results.plan.resolved.arm_names:
        done = results.of_arm(arm)
        c = [r.cost for r in done]
        by_device = timed_on(done)
        row = {"arm": arm, "model": results.plan.resolved.configs[arm].model, "runs": len(done),
               "params": c[0].params if c else None, "flops": c[0].flops if c else None,
               "s_per_step": by_device.get(main, {}).get("s_per_step"), "timed_on": by_device,
               "peak_mib": max((x.peak_mib for x in c if x.peak_mib is not None), default=None),
               "train_s": by_device.get(main, {}).get("train_s"),
               "steps": _median([x.steps for x in c]),
               "precision": _precision_steps(done),
               "not_run": results.plan.not_run.get(arm)}
        if target is not None:
            reached = [time_to_target(list(r.curve), target) for r in done]
            row["target_dice"] = target
            row["reached"] = sum(s is not None for s, _ in reached)
            row["time_to_target_s"] = _median([s for (s, _), r in zip(reached, done) if device_of(r) == main])
            row["steps_to_target"] = _median([n for _, n in reached if n is not None])
        rows.append(row)
    return rows
