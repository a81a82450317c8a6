"""What both official scripts share: reading a label map like nibabel, DeepMind's robust HD95.

Adaptations (each the scripts' behaviour, reached another way):
- Arrays are handed over as ``nibabel``'s ``get_fdata`` gives them: float64, Fortran order. cc3d
  numbers components in memory order, so the order changes the lesion numbers.
- The scripts call a copy of DeepMind's ``surface_distance`` that accepts integer masks and
  answers ``inf`` through ``np.Inf`` when a mask is empty; the PyPI package ``surface-distance``
  (the same DeepMind code) wants boolean masks, and ``np.Inf`` is gone in NumPy 2, so the masks
  are cast to bool and the empty case answered here with the same ``inf``.
"""
from __future__ import annotations

import warnings

import numpy as np
import surface_distance


def as_read_by_nibabel(label: np.ndarray) -> np.ndarray:
    return np.asfortranarray(np.asarray(label, dtype=np.float64))


def deepmind_hd95(gt: np.ndarray, pred: np.ndarray, spacing) -> float:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if not gt.any() or not pred.any():
        return float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = surface_distance.compute_surface_distances(gt, pred, tuple(spacing))
    return float(surface_distance.compute_robust_hausdorff(distances, 95))
