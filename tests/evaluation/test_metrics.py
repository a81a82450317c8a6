"""Metrics against hand-computed cases, the BraTS empty-mask convention, and MONAI."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from glioseg.data.labels import get_scheme
from glioseg.evaluation.metrics import (
    HD95_ONE_EMPTY_MM, dice, evaluate_case, hd95, sensitivity, specificity, surface_distances, volume_ml,
)

from ._synthetic import blob


def _cube(shape, start, size=5) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_offset_cubes_with_anisotropic_spacing():
    # 5³ cubes shifted by 2 voxels along axis 0 of 2 mm: overlap 3·5·5 = 75 voxels.
    a, b = _cube((20, 20, 20), (5, 5, 5)), _cube((20, 20, 20), (7, 5, 5))
    assert dice(a, b) == pytest.approx(2 * 75 / 250)
    # Per surface (98 voxels each way): 48 at 0 mm, 8 at 1, 17 at 2, 25 (the trailing face) at 4 = 2·2 mm.
    forward, backward = surface_distances(a, b, (2.0, 1.0, 1.0))
    for d in (forward, backward):
        assert sorted(np.unique(d, return_counts=True)[1].tolist()) == [8, 17, 25, 48]
        assert np.sort(d)[[0, 47, 48, 55, 56, 72, 73, 97]].tolist() == [0, 0, 1, 1, 2, 2, 4, 4]
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(4.0)
    # The same shift along an axis of 1 mm must give 2 mm: catches a reversed spacing.
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)


def test_single_voxels_use_the_spacing_per_axis():
    a, b = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    a[1, 1, 1] = b[2, 3, 4] = True
    assert hd95(a, b, (0.5, 1.0, 2.0)) == pytest.approx(math.sqrt(0.25 + 4 + 36))
    assert dice(a, b) == 0.0


def test_hd95_ignores_a_small_outlier_that_max_hausdorff_sees():
    a = _cube((30, 30, 30), (5, 5, 5))
    b = a.copy()
    b[25, 25, 25] = True  # one stray voxel among 99 surface voxels
    assert hd95(a, b) == 0.0
    assert max(d.max() for d in surface_distances(a, b)) == pytest.approx(math.sqrt(3 * 16 ** 2))


def test_empty_mask_convention():
    empty, full = np.zeros((6, 6, 6), bool), _cube((6, 6, 6), (1, 1, 1), 3)
    assert (dice(empty, empty), hd95(empty, empty)) == (1.0, 0.0)
    assert (dice(full, empty), hd95(full, empty)) == (0.0, HD95_ONE_EMPTY_MM)
    assert (dice(empty, full), hd95(empty, full)) == (0.0, HD95_ONE_EMPTY_MM)
    assert math.isnan(sensitivity(full, empty))
    assert sensitivity(empty, full) == 0.0


def test_sensitivity_specificity_volume():
    ref = _cube((10, 10, 10), (0, 0, 0), 4)  # 64 voxels
    pred = _cube((10, 10, 10), (2, 0, 0), 4)  # 32 inside ref, 32 outside
    assert sensitivity(pred, ref) == pytest.approx(0.5)
    assert specificity(pred, ref) == pytest.approx((936 - 32) / 936)
    assert volume_ml(ref, (1.0, 1.0, 2.5)) == pytest.approx(64 * 2.5 / 1000)


def test_mismatched_shapes_and_bad_spacing_are_errors():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, 0.0, 1.0))


def _monai(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    d = DiceMetric(include_background=True)(y_pred=p, y=r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = HausdorffDistanceMetric(include_background=True, percentile=95)(y_pred=p, y=r, spacing=list(spacing))
    return float(d), float(h)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_monai_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (36, 30, 24)
    spacing = tuple(rng.uniform(0.6, 2.5, size=3))
    centre = rng.uniform(11, 13, size=3)
    ref = blob(shape, rng, centre, rng.uniform(3, 7, size=3))
    # Seeds 0-1 push the prediction through the grid's corner: surfaces on the border count too.
    pred = blob(shape, rng, centre + rng.uniform(-3, 3, size=3) - 10 * (seed < 2), rng.uniform(3, 7, size=3))
    touches = any(np.take(pred, 0, axis=a).any() for a in range(3))
    assert pred.any() and ref.any() and touches == (seed < 2)
    monai_dice, monai_hd95 = _monai(pred, ref, spacing)
    assert dice(pred, ref) == pytest.approx(monai_dice, abs=1e-6)
    assert hd95(pred, ref, spacing) == pytest.approx(monai_hd95, abs=1e-3)


def test_evaluate_case_rows_follow_the_scheme():
    scheme = get_scheme("brats")
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:8, 2:8, 2:8] = 2
    ref[3:7, 3:7, 3:7] = 1
    ref[4:6, 4:6, 4:6] = 4
    pred = ref.copy()
    pred[pred == 4] = 1  # no enhancing tumour predicted
    rows = evaluate_case(pred, ref, scheme, (1.0, 1.0, 1.0))
    assert [r["region"] for r in rows] == ["WT", "TC", "ET"]
    assert rows[0]["dice"] == rows[1]["dice"] == 1.0 and rows[0]["hd95"] == 0.0
    assert (rows[2]["dice"], rows[2]["hd95"]) == (0.0, HD95_ONE_EMPTY_MM)
    assert rows[0]["ref_ml"] == pytest.approx(216 / 1000) and rows[2]["pred_ml"] == 0.0
