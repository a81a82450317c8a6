"""``glioseg sample OUT``: the bundled real case, copied and checked, with its notice."""
from __future__ import annotations

import argparse

from glioseg.data.sample import NOTICE, SAMPLE_CASE, write_sample


def run(args: argparse.Namespace) -> int:
    folder = write_sample(args.out)
    print(f"sample case {SAMPLE_CASE} (TCGA on TCIA, CC BY 3.0; see {folder / NOTICE}): {folder}")
    print(f"segment it: glioseg predict {folder} --model MODEL --out PREDICTIONS  (models: glioseg models --released)")
    return 0
