"""Choosing the post-processing on held-out predictions: the grid's scores, the mildest of equals, and
a nested choice made without the fold it is applied to."""
from __future__ import annotations

import numpy as np
import pytest

from glioseg.data.labels import get_scheme
from glioseg.experiments.postprocess import best_setting, grid, nested, paired, score_settings

BRATS = get_scheme("brats")


def _tumour(shape=(40, 40, 40)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[4:16, 4:16, 4:16] = BRATS.edema
    label[7:13, 7:13, 7:13] = BRATS.core
    return label


def test_a_false_blob_costs_wt_dice_until_the_threshold_removes_it():
    ref = _tumour()
    pred = ref.copy()
    pred[30:34, 30:34, 30:34] = BRATS.edema              # 64 voxels of false tumour
    scores = score_settings(pred, ref, "brats", (1, 1, 1), [(0.0, 0.0), (50.0, 0.0), (100.0, 0.0)])
    wt = 1728
    assert scores[(0.0, 0.0)][0] == pytest.approx(2 * wt / (2 * wt + 64))
    assert scores[(50.0, 0.0)][0] == pytest.approx(scores[(0.0, 0.0)][0])   # 64 mm³ is not below 50
    assert scores[(100.0, 0.0)] == (1.0, 1.0, 1.0)       # ET empty in both: BraTS Dice 1


def test_a_small_false_et_scores_zero_until_it_is_relabelled_core():
    ref = _tumour()                                       # no enhancing tumour (as in many LGGs)
    pred = ref.copy()
    pred[9:11, 9:11, 9:11] = BRATS.enhancing              # 8 mm³ of ET, inside the core
    scores = score_settings(pred, ref, "brats", (1, 1, 1), [(0.0, 0.0), (0.0, 50.0)])
    assert scores[(0.0, 0.0)] == (1.0, 1.0, 0.0)
    assert scores[(0.0, 50.0)] == (1.0, 1.0, 1.0)


def test_equal_settings_go_to_the_mildest():
    settings = grid()
    assert settings[0] == (0.0, 0.0)
    flat = {"a": {s: (0.8, 0.7, 0.6) for s in settings}}
    assert best_setting(flat, ["a"]) == (0.0, 0.0)


def test_each_fold_gets_the_setting_chosen_on_the_other_folds():
    settings = grid()
    a, b = (100.0, 0.0), (0.0, 500.0)
    def case(favoured):
        return {s: (0.9, 0.9, 0.9) if s == favoured else (0.5, 0.5, 0.5) for s in settings}
    scores = {"x0": case(a), "y0": case(a), "x1": case(b), "y1": case(b)}
    folds = {"x0": 0, "y0": 0, "x1": 1, "y1": 1}
    assert nested(scores, folds) == {0: b, 1: a}
    assert best_setting(scores, list(scores)) in (a, b)


def test_paired_differences_count_better_and_worse():
    result = paired([0.5, 0.5, 0.5, 0.5], [0.6, 0.5, 0.4, 0.7])
    assert result["mean"] == pytest.approx(0.05)
    assert (result["better"], result["worse"]) == (2, 1)
    assert result["ci"][0] <= result["mean"] <= result["ci"][1]
