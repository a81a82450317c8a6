"""One arm of a finished cross-validation experiment as the measured results of a released model.

A released model's card reports how well its recipe did on cases it did not train on
(:mod:`glioseg.inference.model_card`, ``ReleaseResults``). When the recipe was chosen by an
experiment, those figures are that arm's held-out scores: every case predicted once, by the fold
model that did not train on it. :func:`release_results` turns the arm's result files into that
JSON (per case: the mean over seeds; mean, sd, median and n per region; which fold held each case
out), with the method spelled out, the experiment's command, and the study table of every arm in
the notes, so the card says what the recipe was chosen against. An experiment of one arm (a
cross-validation of the release recipe, whose fold models may be released together as an
ensemble) has no study table.
"""
from __future__ import annotations

import os
import statistics

from glioseg.errors import InputError
from glioseg.experiments.results import Results, arm_scores
from glioseg.experiments.stats import by_case, describe


def _check_complete(results: Results, arm: str) -> None:
    plan = results.plan
    if arm not in plan.resolved.arm_names:
        raise InputError(f"{plan.out}: experiment {plan.spec.name} has no arm {arm!r}; "
                         f"its arms: {', '.join(plan.resolved.arm_names)}")
    missing = [r.key for r in plan.runs if r.arm == arm and r not in results.runs]
    if missing:
        raise InputError(f"{plan.out}: arm {arm!r} is not finished ({len(missing)} runs without results: "
                         f"{', '.join(missing)}); cross-validated figures need every fold")


def _steps(results: Results, arm: str) -> str:
    """The steps the arm's fold models trained (their result files; the schedule's length if unrecorded)."""
    done = sorted({r.cost.steps for r in results.of_arm(arm) if r.cost.steps})
    if not done:
        config = results.plan.resolved.config(arm, results.plan.spec.seeds[0])
        return str(config.epochs * config.steps_per_epoch)
    return str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"


def method(results: Results, arm: str) -> str:
    plan = results.plan
    spec = plan.spec
    cases = len(plan.strata)
    seeds = f"{len(spec.seeds)} seed{'s' if len(spec.seeds) > 1 else ''}"
    data = " + ".join(os.path.relpath(p) for p in spec.data_paths())
    return (f"{spec.folds.k}-fold cross-validation on the {cases} cases of {data}, folds "
            f"stratified by site and grade (seed {spec.folds.seed}), {seeds}: arm '{arm}' of the glioseg experiment "
            f"'{spec.name}' at its '{plan.resolved.budget_name}' budget ({_steps(results, arm)} optimiser steps "
            f"per fold model). Every case is "
            f"scored by the fold model that did not train on it, through glioseg predict "
            f"({spec.evaluation.window} window, {spec.evaluation.checkpoint} checkpoint) and glioseg evaluate")


def study_table(results: Results, chosen: str) -> str:
    """Markdown: every arm's held-out Dice (mean ± sd per region, the report's :func:`arm_scores`),
    the finished runs, the chosen arm marked."""
    regions = results.plan.spec.evaluation.regions
    cell = {(r["arm"], r["region"]): r for r in arm_scores(results) if r["metric"] == "dice"}
    lines = [f"| arm | runs | {' | '.join(regions)} | mean |", "|---" * (len(regions) + 3) + "|"]
    for arm in results.arms():
        rows = [cell[(arm, region)] for region in regions]
        cells = ["" if d["mean"] is None else f"{d['mean']:.3f}" + ("" if d["sd"] is None else f" ± {d['sd']:.3f}")
                 for d in rows]
        means = [d["mean"] for d in rows]
        overall = "" if None in means else f"{statistics.fmean(means):.3f}"
        name = f"**{arm}** (released)" if arm == chosen else arm
        total = sum(r.arm == arm for r in results.plan.runs)
        lines.append(f"| {name} | {rows[0]['runs']} of {total} | {' | '.join(cells)} | {overall} |")
    return "\n".join(lines)


def held_out_by(results: Results, arm: str) -> dict[str, str]:
    """case → the fold that held it out (``fold0``; with several seeds, one per seed: ``fold0 seed0,
    fold2 seed1``): the fold model that scored it, and the member of an ensemble release of that name."""
    seeds = len(results.plan.spec.seeds)
    folds: dict[str, list[str]] = {}
    for run in sorted(results.of_arm(arm), key=lambda r: (r.seed, r.fold)):
        for case in run.test_cases:
            folds.setdefault(case, []).append(f"fold{run.fold}" + (f" seed{run.seed}" if seeds > 1 else ""))
    return {case: ", ".join(labels) for case, labels in sorted(folds.items())}


def release_results(results: Results, arm: str, hardware: str, commands: tuple[str, ...] = (),
                    hours: float | None = None, notes: str = "") -> dict:
    """The ``ReleaseResults`` JSON of ``arm`` (every fold finished; else :class:`InputError`).

    ``hardware`` and ``hours`` describe the release training (the card's recipe section);
    ``commands``: how the figures and the release weights were made, in order.
    """
    _check_complete(results, arm)
    dice = {}
    for region in results.plan.spec.evaluation.regions:
        scores = by_case(results.values(region, "dice")[arm])
        d = describe(list(scores.values()))
        dice[region] = {"mean": d["mean"], "sd": d["sd"], "median": d["median"], "n": d["n"], "per_case": scores}
    parts = [notes] if notes else []
    if len(results.plan.resolved.arm_names) > 1:
        parts.insert(0, f"Recipe study ({results.plan.spec.name}, held-out Dice over the cases, mean ± sd; "
                        f"the released recipe in bold):\n\n{study_table(results, arm)}")
    out = {"method": method(results, arm), "hardware": hardware, "dice": dice,
           "held_out_by": held_out_by(results, arm), "commands": list(commands), "notes": "\n\n".join(parts)}
    if hours is not None:
        out["hours"] = hours
    return out
