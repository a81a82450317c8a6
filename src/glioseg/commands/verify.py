"""``glioseg verify DATA [--format F] [--json FILE] [--workers N]``: exit 1 when a case is invalid."""
from __future__ import annotations

import argparse
import logging

from glioseg.data import verify
from glioseg.data.formats import discover

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    dataset = discover(args.data, args.format, strict=False)
    reports = verify.verify_dataset(dataset, workers=args.workers)
    print(verify.format_table(reports))
    print(verify.summary(reports, dataset))
    if args.json is not None:
        log.info("wrote %s", verify.write_json(args.json, dataset, reports))
    return 0 if all(r.valid for r in reports) else 1
