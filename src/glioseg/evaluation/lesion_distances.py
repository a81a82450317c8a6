"""Surface distances of the lesion-wise BraTS evaluations, on cropped masks.

- :func:`robust_hd95`: DeepMind's ``surface_distance`` (the BraTS 2023 and 2024 scripts): surfaces
  from the 2×2×2 neighbourhood code, surfel-area weighted 95th percentile of each direction, the
  larger of the two; inf when either mask is empty (the library's own answer, which it reaches
  through ``np.Inf``, gone in NumPy 2, so glioseg answers it before calling).
- :func:`surface_distance_pair`, :func:`pooled_hd95`, :func:`surface_dice`: panoptica's (BraTS
  2025): surfaces as mask minus its 6-connected erosion, Euclidean distance transforms, HD95 the 95th
  percentile of both directions pooled, NSD at a tolerance of the smallest voxel side.

Both libraries crop to the masks' bounding box themselves (DeepMind) or measure distances only
between surface voxels (panoptica), so a crop that holds both masks plus one background voxel on
each side gives the full grid's numbers.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage

_STRUCTURE_6 = ndimage.generate_binary_structure(3, 1)


def robust_hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """DeepMind's ``compute_robust_hausdorff(compute_surface_distances(ref, pred), 95)`` in mm."""
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    if not reference.any() or not prediction.any():
        return math.inf
    import surface_distance  # a light import, but only lesion-wise evaluations need it

    with warnings.catch_warnings():
        # The library calls scipy.ndimage.filters / .morphology, deprecated aliases of scipy.ndimage.
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = surface_distance.compute_surface_distances(reference, prediction, tuple(spacing))
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def surface_distance_pair(reference: np.ndarray, prediction: np.ndarray,
                          spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """panoptica's distances from each reference surface voxel to the prediction's surface, and back.

    Both masks must be non-empty and lie at least one voxel inside the arrays' edges or touch them
    exactly as in the full grid (the erosion treats the outside as background, as scipy does).
    """
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    sampling = np.asarray(spacing, dtype=np.float64)
    ref_border = reference ^ ndimage.binary_erosion(reference, structure=_STRUCTURE_6, iterations=1)
    pred_border = prediction ^ ndimage.binary_erosion(prediction, structure=_STRUCTURE_6, iterations=1)
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=sampling)[ref_border]
    to_ref = ndimage.distance_transform_edt(~ref_border, sampling=sampling)[pred_border]
    return to_pred, to_ref


def pooled_hd95(to_pred: np.ndarray, to_ref: np.ndarray) -> float:
    """95th percentile (linear) of both directions' distances together (panoptica's HD95)."""
    return float(np.percentile(np.hstack((to_pred, to_ref)), 95))


def surface_dice(to_pred: np.ndarray, to_ref: np.ndarray, spacing: Sequence[float]) -> float:
    """panoptica's normalised surface Dice at a tolerance of the smallest voxel side (mm)."""
    tolerance = min(float(s) for s in spacing)
    tp_a = np.sum(to_pred <= tolerance) / len(to_pred)
    tp_b = np.sum(to_ref <= tolerance) / len(to_ref)
    fp = np.sum(to_pred > tolerance) / len(to_pred)
    fn = np.sum(to_ref > tolerance) / len(to_ref)
    return float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + sys.float_info.min))
