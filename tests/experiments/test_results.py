"""Time to a validation Dice, from a run's validation curve."""
from __future__ import annotations

from glioseg.experiments.results import time_to_target


def _row(step, seconds, *dice):
    wt, tc, et = dice if dice else (None, None, None)
    return {"epoch": step // 10, "step": step, "seconds": seconds, "val_dice_wt": wt, "val_dice_tc": tc,
            "val_dice_et": et}


def test_time_to_target_sums_epoch_seconds_until_the_mean_dice_reaches_it():
    curve = [_row(10, 5.0, 0.3, 0.2, 0.1), _row(20, 6.0), _row(30, 7.0, 0.7, 0.5, 0.45), _row(40, 8.0, 0.9, 0.9, 0.9)]
    assert time_to_target(curve, 0.5) == (18.0, 30)          # mean(0.7, 0.5, 0.45) = 0.55 at step 30
    assert time_to_target(curve, 0.15) == (5.0, 10)           # mean(0.3, 0.2, 0.1) = 0.2
    assert time_to_target(curve, 0.95) == (None, None)
