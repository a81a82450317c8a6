"""Running an experiment's plan: the dry run's description, the shared cache, the runs left, the executor."""
from __future__ import annotations

import logging

import torch

from glioseg.data.sources import dataset_names, discover_all
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
from glioseg.experiments.executors import run_local, run_slurm
from glioseg.experiments.job import make_job
from glioseg.experiments.records import Job
from glioseg.experiments.measure import machine, threads_for
from glioseg.experiments.plan import Plan, save_plan
from glioseg.experiments.results import describe_changes, load_results
from glioseg.experiments.spec import SpecError
from glioseg.files import exclusive_lock

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


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
             f"{len(plan.runs)} runs into {plan.out}", describe_data(plan),
             f"budget {plan.resolved.budget_name}: {budget.description}".rstrip(": ")]
    for arm in spec.arms:
        c = plan.resolved.configs[arm.name]
        lines.append(f"  arm {arm.name}: {c.model} {c.model_options or ''} recipe {arm.recipe}, {c.epochs} epochs x "
                     f"{c.steps_per_epoch} steps, patch {'x'.join(map(str, c.patch))}, precision {c.precision}"
                     + (f", {arm.train_cases} training cases per fold" if arm.train_cases else "")
                     + (f"  NOT RUN: {plan.not_run[arm.name]}" if arm.name in plan.not_run else ""))
    lines.append("  settings that differ between arms: " + (", ".join(plan.resolved.differences()) or "none"))
    lines.append(f"  folds (seed {spec.seeds[0]}), cases per stratum: " + "; ".join(
        f"{s} {'/'.join(map(str, n))}" for s, n in plan.balance(spec.seeds[0]).items()))
    lines += held_out_lines(plan, spec.seeds[0])
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


def describe_data(plan: Plan) -> str:
    """``data PATH (N cases)``; of several datasets each one with its count."""
    if plan.sources is None:
        return f"data {plan.spec.data_path()} ({len(plan.strata)} cases)"
    counts, paths = plan.by_source(plan.strata), plan.spec.data_paths()
    return (f"data: {len(plan.strata)} cases from {len(paths)} datasets: "
            + ", ".join(f"{name} {counts.get(name, 0)} ({path})" for name, path in zip(dataset_names(paths), paths)))


def held_out_lines(plan: Plan, seed: int) -> list[str]:
    """Of several datasets: each fold's held-out cases, each with its dataset (the cases' provenance)."""
    if plan.sources is None:
        return []
    lines = []
    for fold in range(plan.spec.folds.k):
        cases = sorted(c for c, f in plan.folds[seed].items() if f == fold)
        counts = ", ".join(f"{name} {n}" for name, n in plan.by_source(cases).items())
        lines.append(f"  fold {fold} holds out {len(cases)} ({counts}): "
                     + ", ".join(f"{c} [{plan.sources[c]}]" for c in cases))
    return lines


def running(plan: Plan):
    """The experiment folder's lock, held while its runs execute: a second ``experiment run`` on
    the same folder is refused instead of training the same runs beside the first. A budget this
    machine cannot run is refused first, before the folder exists."""
    check_devices(plan)
    return exclusive_lock(plan.out / LOCK_FILE, f"experiment folder {plan.out}")


def check_devices(plan: Plan) -> None:
    """A GPU budget on a machine without one fails now, not when the first run starts."""
    budget = plan.resolved.budget
    for what, device in (("trains", budget.device), ("evaluates", budget.eval_device)):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SpecError(plan.spec.source, f"budget {plan.resolved.budget_name!r} {what} on {device}, but torch "
                                              "sees no CUDA device here (--dry-run shows its plan anyway)")


def runs_left(plan: Plan) -> list:
    """The runs to do, those with work already done first (``trained``: only evaluation is left;
    ``partial``: it resumes from its checkpoint)."""
    progress = {"trained": 0, "partial": 1, "pending": 2}
    status = {run: plan.status(run) for run in plan.runs}
    return sorted((r for r in plan.runs if status[r] in progress), key=lambda r: progress[status[r]])


def prepare(plan: Plan, jobs: int = 1, command: str | None = None, max_runs: int | None = None) -> list[Job]:
    """Save the plan, build the one preprocessing cache of every run and return the jobs of the
    runs to do now, at most ``max_runs`` (``jobs`` processes at once share the CPU's threads);
    under :func:`running`."""
    changed = load_results(plan).resolved_otherwise()
    if changed:
        raise SpecError(str(plan.out), f"{len(changed)} finished runs were trained with settings this version "
                                       f"resolves the spec to differently: {describe_changes(changed)}; name the "
                                       "settings they had in the spec to continue, or use another --out")
    save_plan(plan, command=command, machine=machine())
    for arm, why in plan.not_run.items():
        log.warning("arm %s is not run on this machine: %s", arm, why)
    # one cache for every run: the same preprocessing for all arms, built once (resumable)
    preprocess_dataset(discover_all(plan.spec.data_paths()), plan.cache, PreprocessConfig(), workers=max(1, jobs))
    left = runs_left(plan)
    todo = left[:max_runs]
    log.info("%d of %d runs to do%s", len(left), len(plan.runs),
             f"; {len(todo)} this time (--max-runs {max_runs})" if len(todo) < len(left) else "")
    threads = threads_for(jobs) if jobs > 1 else None
    return [make_job(plan, run, threads) for run in todo]


def execute(plan: Plan, run_jobs: list[Job], executor: str = "local", jobs: int = 1) -> None:
    """Run ``run_jobs``: ``jobs`` local processes at once, or a Slurm job array through submitit."""
    if executor == "slurm":
        run_slurm(run_jobs, plan.out / "slurm", plan.spec.slurm)
    else:
        run_local(run_jobs, jobs)
