"""``glioseg experiment run | status | report | list``: the spec, the plan, the executor, the report."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path

import torch

from glioseg.data.formats import discover
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
from glioseg.experiments.executors import run_local, run_slurm
from glioseg.experiments.job import make_job
from glioseg.experiments.measure import machine, threads_for
from glioseg.experiments.plan import STATES, Plan, load_plan, make_plan, save_plan
from glioseg.experiments.report import write_report
from glioseg.experiments.results import load_results
from glioseg.experiments.spec import SpecError, load_spec, shipped_names

log = logging.getLogger(__name__)


def estimate_seconds(plan: Plan, run) -> float | None:
    """Rough seconds of one run from the budget's ``s_per_step`` and ``s_per_case`` (None without them)."""
    budget, config = plan.resolved.budget, plan.resolved.config(run.arm, run.seed)
    per_step = budget.s_per_step.get(run.arm, budget.s_per_step.get(config.model))
    if per_step is None:
        return None
    train = 60.0 * budget.minutes if budget.minutes else per_step * config.epochs * config.steps_per_epoch
    split = plan.split(run)
    validations = config.epochs // config.val_every + (config.epochs % config.val_every > 0)
    return train + budget.s_per_case * (len(split["test"]) + validations * len(split["val"]))


def describe_plan(plan: Plan) -> str:
    """The dry run's text: arms, budget, folds, runs with their status and estimated time."""
    budget, spec = plan.resolved.budget, plan.spec
    lines = [f"experiment {spec.name}: {len(spec.arms)} arms x {spec.folds.k} folds x {len(spec.seeds)} seeds = "
             f"{len(plan.runs)} runs into {plan.out}", f"data {spec.data_path()} ({len(plan.strata)} cases)",
             f"budget {plan.resolved.budget_name}: {budget.description}".rstrip(": ")]
    for arm in spec.arms:
        c = plan.resolved.configs[arm.name]
        lines.append(f"  arm {arm.name}: {c.model} {c.model_options or ''} recipe {arm.recipe}, {c.epochs} epochs x "
                     f"{c.steps_per_epoch} steps, patch {'x'.join(map(str, c.patch))}, precision {c.precision}"
                     + (f"  NOT RUN: {plan.not_run[arm.name]}" if arm.name in plan.not_run else ""))
    lines.append("  settings that differ between arms: " + (", ".join(plan.resolved.differences()) or "none"))
    lines.append(f"  folds (seed {spec.seeds[0]}), cases per stratum: " + "; ".join(
        f"{s} {'/'.join(map(str, n))}" for s, n in plan.balance(spec.seeds[0]).items()))
    total, unknown = 0.0, []
    for run in plan.runs:
        seconds = None if run.arm in plan.not_run else estimate_seconds(plan, run)
        status = plan.status(run)
        if seconds is not None and status not in ("done", "not run"):
            total += seconds
        elif seconds is None and run.arm not in plan.not_run:
            unknown.append(run.arm)
        lines.append(f"  {run.key}: {status}" + (f", ~{seconds / 60:.0f} min" if seconds else ""))
    note = f" (no s_per_step for {', '.join(sorted(set(unknown)))})" if unknown else ""
    lines.append(f"estimated time for the runs left: {total / 3600:.1f} h with one job{note}")
    return "\n".join(lines)


def check_devices(plan: Plan) -> None:
    """A GPU budget on a machine without one fails now, not when the first run starts."""
    budget = plan.resolved.budget
    for what, device in (("trains", budget.device), ("evaluates", budget.eval_device)):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SpecError(plan.spec.source, f"budget {plan.resolved.budget_name!r} {what} on {device}, but torch "
                                              "sees no CUDA device here (--dry-run shows its plan anyway)")


def run_cli(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    spec = load_spec(args.spec, args.data)
    plan = make_plan(spec, args.budget, Path(args.out))
    if args.dry_run:
        print(describe_plan(plan))
        return 0
    check_devices(plan)
    command = "glioseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    save_plan(plan, command=command, machine=machine())
    for arm, why in plan.not_run.items():
        log.warning("arm %s is not run on this machine: %s", arm, why)
    # one cache for every run: the same preprocessing for all arms, built once (resumable)
    preprocess_dataset(discover(spec.data_path()), plan.cache, PreprocessConfig(), workers=max(1, args.jobs))
    todo = [r for r in plan.runs if plan.status(r) not in ("done", "not run")]
    log.info("%d of %d runs to do", len(todo), len(plan.runs))
    threads = threads_for(args.jobs) if args.jobs > 1 else None
    jobs = [make_job(plan, run, threads) for run in todo]
    try:
        if args.executor == "slurm":
            run_slurm(jobs, plan.out / "slurm", spec.slurm)
        else:
            run_local(jobs, args.jobs)
    finally:
        report = write_report(plan, load_results(plan))
        print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


def status_cli(args: argparse.Namespace) -> int:
    plan = load_plan(args.dir)
    print(f"experiment {plan.spec.name}, budget {plan.resolved.budget_name}, {len(plan.runs)} runs in {args.dir}")
    print(f"{'arm':<28}" + "".join(f"{s:>10}" for s in STATES))
    for arm in plan.resolved.arm_names:
        counts = Counter(plan.status(r) for r in plan.runs if r.arm == arm)
        print(f"{arm:<28}" + "".join(f"{counts[s]:>10}" for s in STATES))
    for arm, why in plan.not_run.items():
        print(f"not run: {arm}: {why}")
    return 0


def report_cli(args: argparse.Namespace) -> int:
    plan = load_plan(args.dir)
    report = write_report(plan, load_results(plan), args.out)
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


def list_cli(args: argparse.Namespace) -> int:
    for name in shipped_names():
        spec = load_spec(name)
        print(f"{name}: {spec.description}")
        print(f"    arms: {', '.join(a.name for a in spec.arms)} (reference {spec.reference})")
        for budget, b in spec.budgets.items():
            print(f"    budget {budget}: {b.description}")
    return 0
