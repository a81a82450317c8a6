"""``glioseg phantom OUT --cases N --seed S [--shape X Y Z]``."""
from __future__ import annotations

import argparse
import logging

from glioseg.data.phantom import BRATS_SHAPE, write_dataset

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    shape = tuple(args.shape) if args.shape else BRATS_SHAPE
    written = write_dataset(args.out, args.cases, args.seed, shape)
    log.info("wrote %d phantom cases (%s voxels, seed %d) to %s", len(written),
             "x".join(map(str, shape)), args.seed, args.out)
    return 0
