"""``glioseg evaluate --pred DIR --ref DATA [DATA ...] --out DIR``: metrics.csv, summary.json and report.html."""
from __future__ import annotations

import argparse
from pathlib import Path

from glioseg.evaluation.evaluate import REPORT_FILE, evaluate, format_table
from glioseg.evaluation.report import cases_from_dataset, write_report
from glioseg.files import refuse_inside


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    refuse_inside(out, args.ref)
    result = evaluate(args.pred, args.ref, out, args.format, args.workers, args.missing, args.metrics)
    print(format_table(result.summary))
    print(f"wrote {out / 'metrics.csv'} and {out / 'summary.json'}")
    if result.lesion_rows:
        print(f"wrote {out / 'lesion_metrics.csv'} and {out / 'lesions.csv'}")
    if not args.no_report:
        # the datasets as scoring discovered them (read once)
        cases = [case for dataset in result.sources.datasets for case in cases_from_dataset(dataset, args.pred)]
        path = write_report(out / REPORT_FILE, cases=cases, metrics=result.rows, summary=result.summary,
                            title=f"glioseg evaluation of {Path(args.pred).name}", max_cases=args.max_cases,
                            with_viewer=not args.no_viewer)
        print(f"wrote {path}")
    return 0
