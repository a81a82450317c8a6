"""glioseg's HD95 of the BraTS 2023/2024 scripts equals DeepMind's surface_distance exactly."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import surface_distance
from scipy import ndimage

from glioseg.evaluation.lesion_distances import robust_hd95, surface_distance_pair


def library_hd95(gt, pred, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return surface_distance.compute_robust_hausdorff(
            surface_distance.compute_surface_distances(gt, pred, spacing), 95)


def blobs(seed, shape=(30, 28, 26)):
    rng = np.random.default_rng(seed)
    smooth = lambda: ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)  # noqa: E731
    return smooth() > 0.08, smooth() > 0.05


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.0), (0.7, 0.7, 3.0)])
@pytest.mark.parametrize("seed", range(5))
def test_robust_hd95_equals_deepmind(seed, spacing):
    gt, pred = blobs(seed)
    assert robust_hd95(gt, pred, spacing) == library_hd95(gt, pred, spacing)


def test_masks_at_the_grid_edge_and_single_voxels():
    gt, pred = np.zeros((6, 7, 8), bool), np.zeros((6, 7, 8), bool)
    gt[0, :, :3] = True
    pred[5, 6, 7] = True
    assert robust_hd95(gt, pred, (1, 1, 1)) == library_hd95(gt, pred, (1, 1, 1))
    assert robust_hd95(pred, pred, (1, 1, 1)) == 0.0


def test_an_empty_mask_is_infinite():
    gt = np.zeros((5, 5, 5), bool)
    gt[2, 2, 2] = True
    assert math.isinf(robust_hd95(gt, np.zeros_like(gt), (1, 1, 1)))
    assert math.isinf(robust_hd95(np.zeros_like(gt), gt, (1, 1, 1)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.0), (0.7, 0.7, 3.0)])
@pytest.mark.parametrize("seed", range(3))
def test_panoptica_surface_distances_equal_its_distance_transforms(seed, spacing):
    """The k-d tree gives the distances panoptica takes from its distance transforms."""
    from panoptica.metrics._surface_distances import _surface_distance_pair  # the test extras install it

    gt, pred = blobs(seed)
    to_pred, to_ref = surface_distance_pair(gt, pred, spacing)
    sd_ref, sd_pred = _surface_distance_pair(gt, pred, voxelspacing=spacing)
    np.testing.assert_allclose(to_pred, sd_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(to_ref, sd_pred, rtol=0, atol=1e-9)
