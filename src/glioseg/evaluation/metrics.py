"""Segmentation metrics as pure NumPy/SciPy functions: Dice, HD95, sensitivity, specificity, volume.

HD95 follows MONAI's ``HausdorffDistanceMetric(percentile=95)`` exactly: the surface of a mask is
the mask minus its binary erosion (6-connected, voxels outside the grid count as background); for
each surface voxel of one mask the Euclidean distance in mm to the nearest surface voxel of the
other; the 95th percentile (linear interpolation) of each directed set; the larger of the two.
Distances are computed on the bounding box of ``pred | ref`` plus a margin, never on the full
240×240×155 grid: the nearest surface voxel of either mask always lies inside that box.

Empty masks follow the BraTS 2018–2021 evaluation (:data:`EMPTY_MASK_CONVENTION`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from glioseg.data.labels import REGIONS, LabelScheme, labels_to_regions

#: HD95 when exactly one of prediction and reference is empty: the diagonal of the
#: 240×240×155 BraTS box at 1 mm, as the BraTS 2018–2021 evaluation scores it.
HD95_ONE_EMPTY_MM = 373.13
EMPTY_MASK_CONVENTION = (
    "BraTS 2018-2021: prediction and reference both empty -> Dice 1, HD95 0 mm; exactly one empty "
    f"-> Dice 0, HD95 {HD95_ONE_EMPTY_MM} mm (the diagonal of the 240x240x155 1 mm BraTS box). "
    "Sensitivity is undefined (NaN, left out of summaries) when the reference is empty; "
    "specificity counts every voxel of the image grid."
)
METRIC_COLUMNS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity", "pred_ml", "ref_ml")


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (mm); got {spacing!r}")
    return values


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap 2|P∩R| / (|P|+|R|) of two boolean masks; 1.0 when both are empty (BraTS)."""
    pred, ref = _pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """TP / (TP + FN): the fraction of the reference found; NaN when the reference is empty."""
    pred, ref = _pair(pred, ref)
    positives = int(ref.sum())
    if positives == 0:
        return float("nan")
    return int(np.logical_and(pred, ref).sum()) / positives


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """TN / (TN + FP) over the whole grid; NaN when the reference covers every voxel."""
    pred, ref = _pair(pred, ref)
    negatives = ref.size - int(ref.sum())
    if negatives == 0:
        return float("nan")
    return (negatives - int(np.logical_and(pred, ~ref).sum())) / negatives


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in millilitres (1 mL = 1000 mm³)."""
    mask = np.asarray(mask, dtype=bool)
    return int(mask.sum()) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def _union_box(pred: np.ndarray, ref: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``pred | ref`` grown by ``margin`` voxels and clipped to the grid."""
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, union.shape[axis])))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its 6-connected erosion (outside the grid is background)."""
    mask = np.asarray(mask, dtype=bool)
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``pred`` to ``ref``'s surface, and back.

    Both masks must be non-empty. The work is done on the union's bounding box plus one voxel,
    which keeps the surfaces (and so every nearest surface voxel) identical to the full grid's.
    """
    pred, ref = _pair(pred, ref)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = _spacing(spacing, pred.ndim)
    box = _union_box(pred, ref, margin=1)
    pred_surface, ref_surface = surface(pred[box]), surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_ref[pred_surface], to_pred[ref_surface]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
         percentile: float = 95.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (MONAI's definition, see module doc).

    Both empty → 0; exactly one empty → :data:`HD95_ONE_EMPTY_MM` (BraTS 2018–2021).
    """
    pred, ref = _pair(pred, ref)
    _spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return HD95_ONE_EMPTY_MM
    forward, backward = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def region_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Every metric of :data:`METRIC_COLUMNS` for one pair of boolean masks."""
    return {
        "dice": dice(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "sensitivity": sensitivity(pred, ref),
        "specificity": specificity(pred, ref),
        "pred_ml": volume_ml(pred, spacing),
        "ref_ml": volume_ml(ref, spacing),
    }


def evaluate_case(pred_label: np.ndarray, ref_label: np.ndarray, scheme: LabelScheme,
                  spacing: Sequence[float]) -> list[dict]:
    """One row per region (WT, TC, ET): ``{"region": ..., **region_metrics}``.

    ``pred_label`` and ``ref_label`` are label maps (X, Y, Z) in ``scheme``'s values on the same
    grid; ``spacing`` is the voxel size in mm. Label values are checked by the caller, which
    knows the file names (see :mod:`glioseg.evaluation.evaluate`).
    """
    pred_regions = labels_to_regions(np.asarray(pred_label), scheme)
    ref_regions = labels_to_regions(np.asarray(ref_label), scheme)
    if pred_regions.shape != ref_regions.shape:
        raise ValueError(f"prediction shape {pred_regions.shape[1:]} differs from reference "
                         f"shape {ref_regions.shape[1:]}")
    return [{"region": region, **region_metrics(p, r, spacing)}
            for region, p, r in zip(REGIONS, pred_regions, ref_regions)]
