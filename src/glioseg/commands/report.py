"""``glioseg report --out FILE [--data DATA [--pred DIR]] [--metrics DIR] [--run DIR]``: one HTML file."""
from __future__ import annotations

import argparse

from glioseg.data.formats import discover
from glioseg.errors import InputError
from glioseg.evaluation.report import cases_from_dataset, load_metrics, write_report


def run(args: argparse.Namespace) -> int:
    if args.pred and not args.data:
        raise InputError("--pred needs --data: the images to draw the predictions on come from the dataset")
    if not (args.data or args.metrics or args.run):
        raise InputError("nothing to report: give --data (with --pred), --metrics or --run")
    cases = cases_from_dataset(discover(args.data, args.format), args.pred) if args.data else []
    metrics, summary = load_metrics(args.metrics) if args.metrics else (None, None)
    path = write_report(args.out, cases=cases, metrics=metrics, summary=summary, run_dir=args.run,
                        title=args.title, convention=args.convention, max_cases=args.max_cases,
                        with_viewer=not args.no_viewer)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
