"""``glioseg demo``: a released model on a real scan, then the pipeline on synthetic data, step by step.

Each step is the command a user would type, run through the same CLI entry point (``main``, given
by :mod:`glioseg.cli`), so the demo shows (and tests) exactly what a user gets:

(a) where a released model is installed (``glioseg models --released``): the bundled real case
    → ``predict --model`` → ``evaluate`` against its expert label (HTML report with overlays);
(b) phantoms → verify → preprocess → a short training run whose precision controller probes,
    decides and logs (``RUN/precision_events.jsonl``) → predict → evaluate.

At the end it prints where both reports are, the Dice of (a) and the precision decision of (b).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path
from typing import Callable

from glioseg.data.sample import SAMPLE_CASE
from glioseg.errors import InputError
from glioseg.evaluation.evaluate import SUMMARY_FILE
from glioseg.files import read_json
from glioseg.inference.released import entry, released_names
from glioseg.run_io import RunFiles

log = logging.getLogger(__name__)

DEFAULT_MODEL = "segresnet-brats"


def released_steps(out: Path, model: str) -> list[list[str]]:
    data, pred = out / "released" / "data", out / "released" / "predictions"
    return [
        ["sample", str(data)],
        ["predict", str(data), "--model", model, "--out", str(pred)],
        ["evaluate", "--pred", str(pred), "--ref", str(data), "--out", str(out / "released" / "evaluation")],
    ]


def demo_steps(out: Path, cases: int, shape: tuple[int, int, int], seed: int) -> list[list[str]]:
    data, cache, run, pred = out / "phantoms", out / "cache", out / "run", out / "predictions"
    return [
        ["phantom", str(data), "--cases", str(cases), "--seed", str(seed), "--shape", *map(str, shape)],
        ["verify", str(data), "--json", str(out / "verify.json")],
        ["preprocess", str(data), "--out", str(cache)],
        ["train", "--data", str(cache), "--out", str(run), "--recipe", "demo", "--seed", str(seed)],
        ["predict", str(data), "--checkpoint", str(RunFiles(run).best), "--out", str(pred)],
        ["evaluate", "--pred", str(pred), "--ref", str(data), "--out", str(out / "evaluation")],
    ]


def demo_model(requested: str | None) -> str | None:
    """The released model part (a) uses: the one asked for, else segresnet-brats, else the first."""
    if requested:
        entry(requested)  # an unknown name fails here, listing the released ones
        return requested
    names = released_names()
    return DEFAULT_MODEL if DEFAULT_MODEL in names else (names[0] if names else None)


Main = Callable[[list[str]], int]


def run_steps(steps: list[list[str]], label: str, main: Main) -> int:
    """Run each step as ``glioseg ARGV`` through ``main``; the first failing step's exit code ends the part."""
    for n, argv in enumerate(steps, 1):
        log.info("demo %s, step %d/%d: glioseg %s", label, n, len(steps), shlex.join(argv))
        code = main(argv)
        if code != 0:
            log.error("demo %s, step %d failed (exit %d): glioseg %s", label, n, code, shlex.join(argv))
            return code
    return 0


def region_dice(evaluation: Path) -> dict[str, float]:
    """Mean Dice per region from ``glioseg evaluate``'s summary.json."""
    summary = read_json(evaluation / SUMMARY_FILE, "the evaluation summary")
    return {region: stats["dice"]["mean"] for region, stats in summary["regions"].items()}


def precision_decision(run: Path) -> str:
    """The controller's target and the probe's reason, from the run folder's logs."""
    files = RunFiles(run)
    summary, events = files.read_summary(), files.read_events()
    probe = next((e["reason"] for e in events if e.get("signal") == "probe"), "no probe (a fixed policy)")
    steps = ", ".join(f"{n} in {p}" for p, n in summary["steps_per_precision"].items() if n)
    return (f"policy {summary['policy']}, target {summary['target']}, steps {steps or 'none'}, "
            f"{summary['switches']} switch(es); {probe}")


def sample_provenance(model: str) -> str:
    """Whether the sample case was among the model's training cases (its index entry's; for an
    ensemble, of how many of its members), which decides whether its Dice says anything about
    unseen scans."""
    item = entry(model)
    cases = item.get("training_cases")
    if cases is None:
        return "training cases not recorded"
    if SAMPLE_CASE not in cases:
        return "held out from this model's training"
    members = item.get("member_training_cases")
    if members and len(members) > 1:
        seen = sum(SAMPLE_CASE in c for c in members.values())
        return (f"a training case of {seen} of this ensemble's {len(members)} members, so not a held-out score: "
                "its card gives the cross-validated Dice")
    return "a training case of this model, so not a held-out score: its card gives the cross-validated Dice"


def _closing(out: Path, model: str | None, seconds: dict[str, float] | None = None) -> list[str]:
    took = {part: f" ({t:.0f} s)" for part, t in (seconds or {}).items()}
    lines = []
    if model is not None:
        dice = region_dice(out / "released" / "evaluation")
        lines += [f"(a) released model {model} on the real case{took.get('a', '')}: "
                  + ", ".join(f"{r} Dice {v:.3f}" for r, v in dice.items()) + f" ({sample_provenance(model)})",
                  f"    report: {out / 'released' / 'evaluation' / 'report.html'}"]
    lines += [f"(b) training on phantoms{took.get('b', '')}, precision decision: {precision_decision(out / 'run')}",
              f"    reports: {out / 'evaluation' / 'report.html'} (evaluation), {out / 'run' / 'report.html'} "
              "(training, with the precision timeline)"]
    return lines


def _timed(seconds: dict[str, float], part: str, steps: list[list[str]], label: str, main: Main) -> int:
    started = time.perf_counter()
    code = run_steps(steps, label, main)
    seconds[part] = time.perf_counter() - started
    return code


def run(args: argparse.Namespace, main: Main) -> int:
    out = Path(args.out)
    if RunFiles(out / "run").last.exists() or (out / "released").exists():
        raise InputError(f"{out}: a demo was already run here; remove the folder or pass another --out")
    model, seconds = demo_model(args.model), {}
    if model is None:
        log.info("no released model in this installation (glioseg models --released): part (a) is skipped")
    elif code := _timed(seconds, "a", released_steps(out, model), "(a) released model", main):
        return code
    if code := _timed(seconds, "b", demo_steps(out, args.cases, tuple(args.shape), args.seed), "(b) training", main):
        return code
    print(f"demo finished in {sum(seconds.values()):.0f} s")
    print("\n".join(_closing(out, model, seconds)))
    return 0
