"""Write the measured-results JSON of a released model from one arm of a finished experiment.

    PYTHONPATH=src python tools/release_results.py runs/experiments/segresnet-recipe --arm "dice 96" \
        --hardware "AMD EPYC (Zen 3), 2 cores, AVX2, fp32; torch 2.13.0 CPU, 2 threads" \
        --command "glioseg train --data ... --out runs/release" [--notes notes.md] --out results.json

The JSON (``glioseg.inference.model_card``'s ``ReleaseResults``) holds the arm's cross-validated
Dice per region (mean, sd, median, n, per case), the fold that held out each case, the method, the
commands (the experiment's own, its report, then each ``--command``: how the release weights were
trained) and, with several arms, the study table of every arm; ``tools/release_model.py --results``
puts it into the model card. Refuses an arm with folds missing. An experiment of one arm (the
shipped spec ``segresnet-release``: ``--arm release``) is a cross-validation of the release recipe,
whose fold models ``tools/release_model.py`` can ship together as one ensemble.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glioseg.errors import GliosegError
from glioseg.experiments.plan import load_plan, saved_command
from glioseg.experiments.release_results import release_results
from glioseg.experiments.results import load_results
from glioseg.files import write_text_atomic


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", type=Path, help="experiment folder (glioseg experiment run ... --out DIR)")
    p.add_argument("--arm", required=True, help="the arm whose recipe the release trained")
    p.add_argument("--hardware", required=True, help="what the release weights were trained on")
    p.add_argument("--command", action="append", default=[], help="how the release weights were made (repeatable)")
    p.add_argument("--hours", type=float, help="training hours of the release run (default: from its metrics.csv; the members of an "
                        "ensemble release always take their own runs')")
    p.add_argument("--notes", type=Path, help="markdown file appended after the study table")
    p.add_argument("--out", type=Path, required=True, help="results JSON to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    try:
        results = load_results(load_plan(args.experiment))
        commands = [c for c in (saved_command(args.experiment),
                                f"glioseg experiment report {args.experiment}") if c] + args.command
        notes = args.notes.read_text() if args.notes else ""
        data = release_results(results, args.arm, args.hardware, tuple(commands), args.hours, notes)
        write_text_atomic(args.out, json.dumps(data, indent=1) + "\n")
    except (OSError, GliosegError) as exc:
        logging.error("%s", exc)
        return 2
    print(f"wrote {args.out}: {args.arm}, " + ", ".join(
        f"{r} {d['mean']:.3f} ± {d['sd']:.3f}, median {d['median']:.3f} (n={d['n']})" if d["sd"] is not None
        else f"{r} {d['mean']:.3f}" for r, d in data["dice"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
