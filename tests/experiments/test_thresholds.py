"""Region thresholds on held-out probabilities: the labels they make, per-region scores, and the
choice (ties to the threshold nearest 0.5)."""
from __future__ import annotations

import numpy as np

from glioseg.data.labels import get_scheme, labels_to_regions
from glioseg.experiments.thresholds import THRESHOLDS, best_thresholds, labels_at, region_scores

BRATS = get_scheme("brats")


def _probabilities() -> tuple[np.ndarray, np.ndarray]:
    """A blurred-edged tumour whose WT probability is 0.65 over a rim the experts did not draw."""
    probs = np.zeros((20, 20, 20, 3), np.float32)
    truth = np.zeros((3, 20, 20, 20), bool)
    truth[0, 5:15, 5:15, 5:15] = truth[1, 8:12, 8:12, 8:12] = truth[2, 9:11, 9:11, 9:11] = True
    probs[3:17, 3:17, 3:17, 0] = 0.65                   # over-segmented rim
    probs[5:15, 5:15, 5:15, 0] = 0.95
    probs[8:12, 8:12, 8:12, 1] = 0.9
    probs[9:11, 9:11, 9:11, 2] = 0.9
    return probs, truth


def test_labels_at_thresholds_are_predicts_nested_labels():
    probs, truth = _probabilities()
    plain, high = labels_at(probs, (0.5, 0.5, 0.5), BRATS), labels_at(probs, (0.7, 0.5, 0.5), BRATS)
    assert (labels_to_regions(high, BRATS) == truth).all()
    assert (plain > 0).sum() == 14 ** 3 and set(np.unique(high)) == {0, 1, 2, 4}


def test_a_higher_wt_threshold_wins_where_the_network_over_segments():
    probs, truth = _probabilities()
    scores = region_scores(probs, truth, BRATS)
    assert set(scores) == set(THRESHOLDS)
    assert scores[0.7][0] == 1.0 and scores[0.5][0] < 1.0 and scores[0.3][1] == 1.0
    assert best_thresholds({"a": scores}, ["a"]) == (0.7, 0.5, 0.5)   # TC and ET: all tie, 0.5 kept


def test_a_threshold_leaves_half_only_for_a_real_gain():
    scores = {"a": {t: [0.80, 0.70, 0.60] for t in THRESHOLDS}}
    scores["a"][0.8] = [0.83, 0.705, 0.60]       # WT +0.03, TC +0.005 (noise), ET nothing
    assert best_thresholds(scores, ["a"]) == (0.8, 0.5, 0.5)
    assert best_thresholds(scores, ["a"], min_gain=0.0) == (0.8, 0.8, 0.5)
    assert best_thresholds(scores, ["a"], min_gain=0.0, regions=("WT",)) == (0.8, 0.5, 0.5)
