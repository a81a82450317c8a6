"""The experiment report's figures as PNG bytes (matplotlib's object API, no pyplot state).

Per-region box plots of Dice per arm; the paired differences against the reference arm with
their bootstrap CIs; mean Dice against parameters and against training time; validation Dice
curves per arm (every run a thin line).
"""
from __future__ import annotations

import math

from matplotlib.figure import Figure

from glioseg.evaluation.figures import to_png
from glioseg.experiments.results import Results, devices
from glioseg.experiments.stats import Comparison

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:gray", "tab:olive", "tab:cyan")


def _colour(results: Results, arm: str) -> str:
    return COLOURS[results.plan.resolved.arm_names.index(arm) % len(COLOURS)]


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def box_plots(results: Results, metric: str = "dice", dpi: int = 100) -> bytes:
    regions = results.plan.spec.evaluation.regions
    arms = results.arms()
    fig = Figure(figsize=(max(4.0, 0.7 * len(arms) + 1.5) * len(regions), 4.4))
    axes = fig.subplots(1, len(regions), squeeze=False)[0]
    for ax, region in zip(axes, regions):
        values = results.values(region, metric)
        data = [_finite(values[a].values()) or [math.nan] for a in arms]
        parts = ax.boxplot(data, patch_artist=True, widths=0.6)
        for patch, arm in zip(parts["boxes"], arms):
            patch.set_facecolor(_colour(results, arm))
            patch.set_alpha(0.5)
        ax.set_xticks(range(1, len(arms) + 1), arms, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{region} {'Dice' if metric == 'dice' else 'HD95 (mm)'}", fontsize=10)
        if metric == "dice":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return to_png(fig, dpi)


def difference_plot(comparisons: list[Comparison], dpi: int = 100) -> bytes:
    """Mean paired difference (arm − reference) with its 95 % CI, per region; Dice only."""
    rows = [c for c in comparisons if c.metric == "dice"]
    regions = list(dict.fromkeys(c.region for c in rows))
    arms = list(dict.fromkeys(c.arm for c in rows))
    fig = Figure(figsize=(8, 0.6 * max(1, len(arms)) * max(1, len(regions)) + 1.6))
    ax = fig.subplots()
    labels = []
    for i, c in enumerate(rows):
        y = len(rows) - i
        colour = "tab:red" if "worse" in c.verdict else "tab:green" if "better" in c.verdict else "0.35"
        if math.isfinite(c.delta):
            ax.errorbar(c.delta, y, xerr=[[c.delta - c.ci[0]], [c.ci[1] - c.delta]], fmt="o", color=colour,
                        capsize=3)
        labels.append((y, f"{c.arm} {c.region}"))
    ax.axvline(0, color="0.2", linewidth=0.8)
    if labels:
        ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=8)
    reference = rows[0].reference if rows else "reference"
    ax.set_xlabel(f"Dice difference vs {reference} (mean over cases, 95 % bootstrap CI)")
    ax.set_title("paired differences (green/red: significant after Holm)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return to_png(fig, dpi)


def dice_vs_cost(results: Results, cost_rows: list[dict], dpi: int = 100) -> bytes:
    """Mean Dice (regions averaged) against parameters and against training time."""
    regions = results.plan.spec.evaluation.regions
    per_region = {r: results.values(r, "dice") for r in regions}
    fig = Figure(figsize=(10, 4))
    by_params, by_time = fig.subplots(1, 2)
    for row in cost_rows:
        arm = row["arm"]
        if arm not in results.arms():
            continue
        scores = _finite([v for r in regions for v in per_region[r][arm].values()])
        if not scores:
            continue
        mean = sum(scores) / len(scores)
        for ax, x in ((by_params, row["params"]), (by_time, row["train_s"])):
            if x:
                ax.scatter([x], [mean], color=_colour(results, arm), s=40)
                ax.annotate(arm, (x, mean), fontsize=8, xytext=(4, 4), textcoords="offset points")
    by_params.set_xscale("log")
    by_params.set_xlabel("parameters")
    several = len(devices(results)) > 1   # times of the main device only (the report's [1])
    by_time.set_xlabel("training time per run (s, median" + (", runs timed on [1])" if several else ")"))
    for ax in (by_params, by_time):
        ax.set_ylabel(f"mean Dice ({', '.join(regions)})")
        ax.margins(0.2)   # room for the arm names beside the points
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig, dpi)


def validation_curves(results: Results, dpi: int = 100) -> bytes:
    """Mean validation Dice (WT, TC, ET) against optimiser steps, every finished run."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    for arm in results.arms():
        for n, r in enumerate(results.of_arm(arm)):
            points = [(row["step"], sum(row[f"val_dice_{x}"] for x in ("wt", "tc", "et")) / 3)
                      for row in r.curve if all(row.get(f"val_dice_{x}") is not None for x in ("wt", "tc", "et"))]
            if points:
                ax.plot(*zip(*points), color=_colour(results, arm), marker=".", linewidth=1, alpha=0.8,
                        label=arm if n == 0 else None)
    target = results.plan.spec.evaluation.target_dice
    if target is not None:
        ax.axhline(target, color="0.3", linestyle="--", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation Dice (mean of WT, TC, ET)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return to_png(fig, dpi)
