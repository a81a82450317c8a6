"""``glioseg experiment run | status | report | list | postprocess | curve | compare``: the spec, the plan, the executor, the report."""
from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from pathlib import Path

from glioseg.errors import InputError
from glioseg.experiments.compare import load_side, sections
from glioseg.experiments.learning_curve import format_curve, score_snapshots, summarise, write_curve
from glioseg.experiments.postprocess import choose_postprocess, format_choice, write_choice
from glioseg.experiments.thresholds import choose as choose_thresholds
from glioseg.experiments.plan import STATES, Plan, load_plan, make_plan
from glioseg.experiments.report import to_html, to_markdown, write_report
from glioseg.experiments.results import load_results
from glioseg.experiments.executors import RunsFailed
from glioseg.experiments.runner import (describe_data, describe_plan, execute, held_out_lines, prepare, running,
                                        runs_left)
from glioseg.experiments.spec import load_spec, shipped_names
from glioseg.files import write_text_atomic


def _write_report(plan: Plan, out: Path | None = None) -> None:
    report = write_report(plan, load_results(plan), out)
    print(f"wrote {report} and {report.with_suffix('.html')}")


def run_experiment(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    if args.max_runs is not None and args.max_runs < 1:
        raise InputError(f"--max-runs must be at least 1, got {args.max_runs}")
    plan = make_plan(load_spec(args.spec, args.data), args.budget, Path(args.out))
    if args.dry_run:
        print(describe_plan(plan))
        return 0
    command = "glioseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    with running(plan):
        jobs = prepare(plan, args.jobs, command, args.max_runs)
        try:
            execute(plan, jobs, args.executor, args.jobs)
        except RunsFailed:
            _write_report(plan)   # the report shows what finished
            raise
        _write_report(plan)
    left = len(runs_left(plan))
    if left:
        print(f"{left} of {len(plan.runs)} runs left: run the same command again to continue")
    return 0


def status(args: argparse.Namespace) -> int:
    plan = load_plan(args.dir)
    print(f"experiment {plan.spec.name}, budget {plan.resolved.budget_name}, {len(plan.runs)} runs in {args.dir}")
    if plan.sources is not None:   # several datasets: where each held-out case comes from
        print(describe_data(plan))
        for seed in plan.spec.seeds:
            print(f"seed {seed}:")
            print("\n".join(held_out_lines(plan, seed)))
    print(f"{'arm':<28}" + "".join(f"{s:>10}" for s in STATES))
    for arm in plan.resolved.arm_names:
        counts = Counter(plan.status(r) for r in plan.runs if r.arm == arm)
        print(f"{arm:<28}" + "".join(f"{counts[s]:>10}" for s in STATES))
    for arm, why in plan.not_run.items():
        print(f"not run: {arm}: {why}")
    return 0


def report(args: argparse.Namespace) -> int:
    _write_report(load_plan(args.dir), args.out)
    return 0


def list_specs(args: argparse.Namespace) -> int:
    for name in shipped_names():
        spec = load_spec(name)
        print(f"{name}: {spec.description}")
        print(f"    arms: {', '.join(a.name for a in spec.arms)} (reference {spec.reference})")
        for budget, b in spec.budgets.items():
            print(f"    budget {budget}: {b.description}")
    return 0


def postprocess(args: argparse.Namespace) -> int:
    plan = load_plan(args.dir)
    choice = (choose_thresholds(plan, args.arm, args.data, args.thresholds or (), args.tta)
              if args.thresholds or args.tta else choose_postprocess(plan, args.arm, args.data))
    path = write_choice(plan, choice)
    print(format_choice(choice))
    print(f"wrote {path}")
    return 0


def curve(args: argparse.Namespace) -> int:
    plan = load_plan(args.dir)
    arm = args.arm or plan.spec.reference
    rows = score_snapshots(plan, arm, args.data)
    path, figure = write_curve(plan, arm, rows)
    print(format_curve(summarise(rows)))
    print(f"wrote {path} and {figure}")
    return 0


def compare(args: argparse.Namespace) -> int:
    parts = sections(load_side(args.a, args.arm_a), load_side(args.b, args.arm_b))
    text = to_markdown(parts)
    print(text, end="")
    if args.out is not None:
        write_text_atomic(args.out.with_suffix(".html"), to_html(parts, parts[0][1]))
        write_text_atomic(args.out, text)
        print(f"wrote {args.out} and {args.out.with_suffix('.html')}")
    return 0


ACTIONS = {"run": run_experiment, "status": status, "report": report, "list": list_specs,
           "postprocess": postprocess, "curve": curve, "compare": compare}


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)
