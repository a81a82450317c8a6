"""Held-out Dice against training steps: every kept snapshot of an arm's fold models, scored.

A run trained with ``snapshot_every`` keeps ``RUN/snapshots/step-N.pt``
(:class:`glioseg.training.callbacks.KeepSnapshots`). Each snapshot predicts the run's held-out
cases through the predict pipeline, exactly as the experiment's own evaluation does
(:func:`glioseg.experiments.job.score_checkpoint`), into ``RUN/snapshot-predictions/step-N``; the
run's evaluated checkpoint is the last point when it is the last step. The curve says how much
the fold models were still gaining when training stopped: what more steps would buy.

Result: ``DIR/results/learning-curve-<arm>.json`` (no images; committable) and a figure.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from glioseg.data.labels import REGIONS
from glioseg.errors import InputError
from glioseg.experiments.job import score_checkpoint
from glioseg.experiments.plan import Plan
from glioseg.experiments.results import finished_runs
from glioseg.experiments.spec import slug
from glioseg.experiments.stats import describe
from glioseg.files import write_json
from glioseg.run_io import RunFiles

log = logging.getLogger(__name__)


def _points(plan: Plan, arm: str) -> list[tuple]:
    """(run, result, step, checkpoint, prediction folder) for every snapshot of ``arm``'s finished runs."""
    points = []
    for run, result in finished_runs(plan, arm):
        folder = plan.run_dir(run)
        snapshots = RunFiles(folder).snapshots()
        if not snapshots:
            raise InputError(f"{folder}: no snapshots (RUN/snapshots/step-N.pt); train with snapshot_every")
        for step, path in snapshots.items():
            points.append((run, result, step, path, folder / "snapshot-predictions" / path.stem))
    return points


def score_snapshots(plan: Plan, arm: str | None = None, data: Path | list[Path] | None = None) -> list[dict]:
    """Per-case rows (``glioseg evaluate``'s columns) with ``fold``, ``seed`` and ``step``."""
    arm = arm or plan.spec.reference
    data = data or plan.spec.data_paths()   # one dataset or several
    rows = []
    points = _points(plan, arm)
    for n, (run, result, step, checkpoint, pred_dir) in enumerate(points, 1):
        log.info("learning curve %d/%d: %s step %d", n, len(points), run.key, step)
        if result.checkpoint == "last" and step == result.cost.steps:
            scored = result.rows   # the run's own evaluation scored this very state
        else:
            scored, _ = score_checkpoint(checkpoint, set(result.test_cases), data, pred_dir,
                                         plan.spec.evaluation.window, plan.resolved.budget.eval_device)
        rows += [{**r, "fold": run.fold, "seed": run.seed, "step": step} for r in scored]
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per step and region: Dice mean, sd, median and n over the held-out cases."""
    out = []
    for step in sorted({r["step"] for r in rows}):
        for region in REGIONS:
            values = [r["dice"] for r in rows if r["step"] == step and r["region"] == region]
            out.append({"step": step, "region": region, **describe(values)})
    return out


def write_curve(plan: Plan, arm: str, rows: list[dict]) -> tuple[Path, Path]:
    """The result file and the figure (Dice vs steps, per region, mean and per fold)."""
    path = plan.out / "results" / f"learning-curve-{slug(arm)}.json"
    write_json(path, {"kind": "glioseg-learning-curve", "experiment": plan.spec.name, "arm": arm,
                      "summary": summarise(rows), "rows": rows}, indent=1, end="\n")
    figure = plan.out / "report" / f"learning-curve-{slug(arm)}.png"
    plot_curve(rows, figure, f"{plan.spec.name}: {arm}")
    return path, figure


def plot_curve(rows: list[dict], out: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.4), sharey=True)
    for ax, region in zip(axes, REGIONS):
        region_rows = [r for r in rows if r["region"] == region]
        steps = sorted({r["step"] for r in region_rows})
        for fold in sorted({r["fold"] for r in region_rows}):
            means = [np.mean([r["dice"] for r in region_rows if r["fold"] == fold and r["step"] == s]) for s in steps]
            ax.plot(steps, means, color="0.7", lw=1, marker=".", label="a fold's cases" if fold == 0 else None)
        means = [np.mean([r["dice"] for r in region_rows if r["step"] == s]) for s in steps]
        ax.plot(steps, means, color="C0", lw=2, marker="o", label="all held-out cases")
        ax.set_title(region)
        ax.set_xlabel("optimiser steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out Dice (mean)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def format_curve(summary: list[dict]) -> str:
    lines = ["| steps | " + " | ".join(f"{r} mean / median" for r in REGIONS) + " |",
             "|---|" + "---|" * len(REGIONS)]
    for step in sorted({s["step"] for s in summary}):
        cells = {s["region"]: s for s in summary if s["step"] == step}
        lines.append(f"| {step} | " + " | ".join(f"{cells[r]['mean']:.3f} / {cells[r]['median']:.3f}"
                                                  for r in REGIONS) + " |")
    return "\n".join(lines)
