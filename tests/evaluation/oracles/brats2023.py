"""Oracle of the BraTS 2023 lesion-wise evaluation (glioma: dilation 3, threshold 50, penalty 374).

Source: github.com/rachitsaluja/BraTS-2023-Metrics, ``brats_2023_metrics/surface_distance/
brats_metrics.py`` at commit 0c603fcc070c2c543d7b0be80d8ae3d654914b75 (the packaged form of the
repository's ``metrics.py``), Apache License 2.0: ``get_tissue_wise_mask``,
``get_gt_seg_combined_by_dilation``, ``get_lesion_wise_score`` and ``get_lesion_wise_results``,
re-stated on arrays (no NIfTI paths, no pandas) with the same steps on the full grid, in the same
order. See :mod:`.common` for the two adaptations. The legacy whole-region Dice, HD95, sensitivity
and specificity the script also reports are left out (glioseg's region metrics are tested
elsewhere).
"""
from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from .common import as_read_by_nibabel, deepmind_hd95

TISSUES = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
PENALTY = 374.0


def combined_by_dilation(dilated_cc: np.ndarray, gt_cc: np.ndarray) -> np.ndarray:
    """Every reference voxel labelled with the number of its dilated component, one component at a time."""
    out = np.zeros_like(dilated_cc)
    for comp in range(1, int(np.max(dilated_cc)) + 1):
        part = np.zeros_like(dilated_cc)
        part[dilated_cc == comp] = 1
        part = gt_cc * part
        np.place(part, part > 0, comp)
        out += part
    return out


def lesion_scores(pred_mask, gt_mask, spacing, dil_factor, pred_cc=None, gt_label_cc=None):
    """The script's lesion loop: (lesion rows, matched component numbers, all predicted numbers)."""
    structure = ndimage.generate_binary_structure(3, 2)
    if gt_label_cc is None:
        gt_cc = cc3d.connected_components(gt_mask, connectivity=26)
        dilated = ndimage.binary_dilation(gt_mask, structure=structure, iterations=dil_factor)
        gt_label_cc = combined_by_dilation(cc3d.connected_components(dilated, connectivity=26), gt_cc)
    if pred_cc is None:
        pred_cc = cc3d.connected_components(pred_mask, connectivity=26)
    voxel = float(np.prod(spacing))
    rows, matched_all = [], []
    for comp in range(1, int(np.max(gt_label_cc)) + 1):
        lesion = np.zeros_like(gt_label_cc)
        lesion[gt_label_cc == comp] = 1
        zone = ndimage.binary_dilation(lesion, structure=structure, iterations=dil_factor)
        volume = np.sum(lesion > 0) * voxel
        touching = np.unique(pred_cc * zone)
        touching = touching[touching != 0]
        matched_all.extend(int(t) for t in touching)
        union = np.isin(pred_cc, touching).astype(int)
        lesion_b, union_b = lesion.astype(bool), union.astype(bool)
        dice = 2.0 * np.logical_and(lesion_b, union_b).sum() / (lesion_b.sum() + union_b.sum())
        hd = deepmind_hd95(lesion, union, spacing)
        rows.append((comp, float(volume), tuple(int(t) for t in touching), float(dice), hd))
    predicted = [int(v) for v in np.unique(pred_cc) if v != 0]
    return rows, matched_all, predicted


def case_scores(rows, matched_all, predicted, threshold, penalty):
    """The script's per-case summary of one region (pandas steps written with lists)."""
    fp = [p for p in predicted if p not in set(matched_all)]
    rows = [(c, v, m, d, penalty if np.isinf(h) else h) for c, v, m, d, h in rows]
    kept = [r for r in rows if r[1] > threshold]
    n = len(kept) + len(fp)
    dice = sum(r[3] for r in kept) / n if n else 1.0
    hd95 = (sum(r[4] for r in kept) + len(fp) * penalty) / n if n else 0.0
    tp = sum(1 for r in kept if r[2])
    return {"dice": dice, "hd95": hd95, "tp": tp, "fp": len(fp), "fn": len(kept) - tp, "lesions": rows}


def evaluate(pred_label, gt_label, spacing=(1.0, 1.0, 1.0), dil_factor=3, threshold=50):
    """Per region WT, TC, ET of BraTS 2023 label maps: the case scores and the lesion rows."""
    pred_label, gt_label = as_read_by_nibabel(pred_label), as_read_by_nibabel(gt_label)
    out = {}
    for region, values in TISSUES.items():
        pred = np.asfortranarray(np.isin(pred_label, values).astype(np.float64))
        gt = np.asfortranarray(np.isin(gt_label, values).astype(np.float64))
        rows, matched, predicted = lesion_scores(pred, gt, spacing, dil_factor)
        out[region] = case_scores(rows, matched, predicted, threshold, PENALTY)
    return out
