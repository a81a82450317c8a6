"""Replay ``--precision auto``'s instability signals over finished runs: spikes per precision.

    PYTHONPATH=src python tools/replay_precision_signals.py RUN/steps.csv [RUN/steps.csv ...] [--split 2000]

Reads each run's per-step log (``steps.csv``: loss, gradient norm, the precision the step ran in)
and feeds the losses and gradient norms through a fresh :class:`SignalTracker` with the default
:class:`PrecisionConfig` thresholds, as the controller does during training. Prints, per precision
and per part of the run (before / after step ``--split``), the steps and how many of them the
loss-spike and gradient-spike tests flag, per 1000 steps, and how many of the loss spikes the
gradients confirm (``loss_grad_z``: since session 20 ``auto`` falls back only on those). Spikes at
the same rate in fp32 as in bf16 come from the data (a hard patch late in training), not from the
precision.

An approximation of the run's own tracker: the controller's statistics also see the steps it
skipped, and nothing is reset at its switches here either, so counts can differ by a step or two.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from glioseg.training.precision.config import PrecisionConfig  # noqa: E402
from glioseg.training.precision.signals import SignalTracker, gradient_confirms  # noqa: E402


def replay(path: Path, split: int, cfg: PrecisionConfig) -> dict[tuple[str, str], list[int]]:
    """(precision, part) → [steps, loss spikes, gradient spikes, confirmed loss spikes] of one run."""
    tracker = SignalTracker.for_config(cfg)   # the controller's own
    counts: dict[tuple[str, str], list[int]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            signals = tracker.observe(float(row["loss"]), float(row["grad_norm"]))
            part = f"steps 1-{split}" if int(row["step"]) <= split else f"after {split}"
            c = counts.setdefault((row["precision"], part), [0, 0, 0, 0])
            loss_spike = signals.loss_z > cfg.loss_z
            c[0] += 1
            c[1] += loss_spike
            c[2] += signals.grad_z > cfg.grad_z
            c[3] += loss_spike and gradient_confirms(cfg.loss_grad_z, signals.grad_z, True)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", type=Path, help="steps.csv of finished or running runs")
    parser.add_argument("--split", type=int, default=2000, help="count steps before and after this one apart")
    args = parser.parse_args(argv)
    cfg = PrecisionConfig()
    print(f"{'run':<40s} {'precision':>9s} {'part':>12s} {'steps':>6s} {'loss spikes':>16s} {'grad spikes':>16s} "
          f"{'confirmed loss spikes':>22s}")
    for path in args.steps:
        run = f"{path.parent.parent.name}/{path.parent.name}"
        for (precision, part), (n, loss, grad, confirmed) in sorted(replay(path, args.split, cfg).items()):
            print(f"{run:<40s} {precision:>9s} {part:>12s} {n:6d} {loss:5d} ({1000 * loss / n:5.1f}/k) "
                  f"{grad:5d} ({1000 * grad / n:5.1f}/k) {confirmed:11d} ({1000 * confirmed / n:5.1f}/k)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
