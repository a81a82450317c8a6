"""``glioseg demo``: the whole pipeline on bundled synthetic data, step by step.

Each step is the command a user would type, run through the same CLI entry point, so the
demo shows (and tests) exactly what a user gets: phantoms → verify → preprocess → train →
predict → evaluate (metrics + HTML report).
"""
from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

log = logging.getLogger(__name__)


def demo_steps(out: Path, cases: int, shape: tuple[int, int, int], seed: int) -> list[list[str]]:
    data, cache, run, pred = out / "phantoms", out / "cache", out / "run", out / "predictions"
    return [
        ["phantom", str(data), "--cases", str(cases), "--seed", str(seed), "--shape", *map(str, shape)],
        ["verify", str(data), "--json", str(out / "verify.json")],
        ["preprocess", str(data), "--out", str(cache)],
        ["train", "--data", str(cache), "--out", str(run), "--recipe", "demo", "--seed", str(seed)],
        ["predict", str(data), "--checkpoint", str(run / "best.pt"), "--out", str(pred)],
        ["evaluate", "--pred", str(pred), "--ref", str(data), "--out", str(out / "evaluation")],
    ]


def run_cli(args: argparse.Namespace) -> int:
    from glioseg.cli import main

    out = Path(args.out)
    if (out / "run" / "last.pt").exists():
        raise ValueError(f"{out}: a demo was already run here; remove the folder or pass another --out")
    steps = demo_steps(out, args.cases, tuple(args.shape), args.seed)
    for n, argv in enumerate(steps, 1):
        log.info("demo step %d/%d: glioseg %s", n, len(steps), shlex.join(argv))
        code = main(argv)
        if code != 0:
            log.error("demo step %d failed (exit %d): glioseg %s", n, code, shlex.join(argv))
            return code
    log.info("demo finished: open %s (evaluation) and %s (training)",
             out / "evaluation" / "report.html", out / "run" / "report.html")
    return 0
