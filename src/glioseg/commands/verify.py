"""``glioseg verify DATA [DATA ...] [--format F] [--json FILE] [--workers N]``: exit 1 when a case is invalid.

Several datasets are each reported (table and summary under a heading naming the dataset), then
counted together; their case ids are checked unique across them before any file is read.
"""
from __future__ import annotations

import argparse
import logging

from glioseg.data import verify
from glioseg.data.sources import as_paths, discover_all

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    paths = as_paths(args.data)
    sources = discover_all(paths, args.format, strict=False)
    results = []
    for name, dataset in zip(sources.names, sources.datasets):
        if not sources.single:
            print(f"== {name}: {dataset.root} ({len(dataset.cases)} cases, {dataset.format}, "
                  f"{dataset.scheme.name} labels)")
        reports = verify.verify_dataset(dataset, workers=args.workers)
        print(verify.format_table(reports))
        print(verify.summary(reports, dataset))
        results.append((name, dataset, reports))
    if not sources.single:
        print(verify.overall(results))
    if args.json is not None:
        written = (verify.write_json(args.json, results[0][1], results[0][2]) if sources.single
                   else verify.write_json_several(args.json, results))
        log.info("wrote %s", written)
    return 0 if all(r.valid for _, _, reports in results for r in reports) else 1
