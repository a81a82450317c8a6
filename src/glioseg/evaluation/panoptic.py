"""BraTS 2025+ lesion-wise scores: the organisers' ``brats-evaluation`` (panoptica) rules, on crops.

``brats-evaluation``'s glioma config (``config_gli.yaml``) runs panoptica per region (WT, TC, NETC,
SNFH, ET, RC of the BraTS 2023+ labels): 26-connected components of reference and prediction are the
instances; instances are matched one-to-one by maximum bipartite matching on Dice (pairs of Dice
≥ 1e-6, scipy's ``linear_sum_assignment`` on cost 1 − Dice, a pair kept when its cost is < 1); each
matched pair gets Dice, NSD (tolerance = the smallest voxel side) and HD95 (95th percentile of both
directions' surface distances pooled). Per case: ``lesionwise_dsc_mean`` / ``_hd95_mean`` /
``_nsd_mean`` are means over matched pairs only; unmatched instances count in RQ = TP / (TP + ½FP +
½FN). With no match: Dice and NSD 0, HD95 infinite, RQ 0; with no instance at all, NaN.

glioseg writes an infinite per-case HD95 as :data:`HD95_PENALTY` mm (the organisers' parser does so
for global HD95 and missing cases) and lists unmatched reference lesions in the lesion table with
Dice 0 and that HD95, marked as not matched; neither enters the matched-pair means.
panoptica itself is the test oracle (``tests/evaluation/test_panoptic.py``); it is not a run-time
dependency (heavy, and ``brats-evaluation`` is AGPL-3.0).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from glioseg.data.labels import LabelScheme
from glioseg.evaluation import lesion_components as lc
from glioseg.evaluation.lesion_distances import pooled_hd95, surface_dice, surface_distance_pair
from glioseg.evaluation.lesionwise import Lesion, RegionScore, brats2023_labels, tissue_mask

NAME = "lesion-2025"
REGIONS: tuple[str, ...] = ("WT", "TC", "NETC", "SNFH", "ET", "RC")
#: Minimum Dice of a matchable pair (``matching_threshold`` of config_gli.yaml).
MATCH_THRESHOLD = 1e-6
#: HD95 written for an infinite one (no matched pair): the diameter of the SRI24 box, 373 mm.
HD95_PENALTY = 373.0
SOURCE = "brats-evaluation 0.0.10 (config_gli.yaml) on panoptica 2.1 (PyPI; BraTS/BraTS_evaluation)"


def overlap_table(ref_ids: np.ndarray, pred_ids: np.ndarray) -> dict[tuple[int, int], int]:
    """Voxels shared by each (reference instance, predicted instance) pair that overlaps."""
    both = (ref_ids > 0) & (pred_ids > 0)
    keys = ref_ids[both].astype(np.int64) * (1 << 32) + pred_ids[both].astype(np.int64)
    values, counts = np.unique(keys, return_counts=True)
    return {(int(k >> 32), int(k & 0xFFFFFFFF)): int(c) for k, c in zip(values, counts)}


def match_instances(ref_sizes: dict[int, int], pred_sizes: dict[int, int],
                    overlaps: dict[tuple[int, int], int]) -> list[tuple[int, int, float]]:
    """panoptica's ``MaxBipartiteMatching`` on Dice: (reference, prediction, Dice) of each match."""
    ref_labels, pred_labels = sorted(ref_sizes), sorted(pred_sizes)
    if not ref_labels or not pred_labels:
        return []
    row = {label: i for i, label in enumerate(ref_labels)}
    col = {label: j for j, label in enumerate(pred_labels)}
    cost = np.full((len(ref_labels), len(pred_labels)), 1.0 + 1e-6)
    dice = {}
    for (r, p), shared in overlaps.items():
        score = 2 * shared / (ref_sizes[r] + pred_sizes[p])
        if score >= MATCH_THRESHOLD:
            cost[row[r], col[p]] = 1.0 - score
            dice[r, p] = score
    rows, cols = linear_sum_assignment(cost)
    return [(ref_labels[i], pred_labels[j], dice[ref_labels[i], pred_labels[j]])
            for i, j in zip(rows, cols) if cost[i, j] < 1.0]


def _sizes(ids: np.ndarray) -> dict[int, int]:
    counts = np.bincount(ids.ravel())
    return {int(label): int(counts[label]) for label in np.flatnonzero(counts) if label > 0}


def pair_metrics(ref_ids: np.ndarray, pred_ids: np.ndarray, r: int, p: int, ref_box, pred_box,
                 spacing: Sequence[float]) -> tuple[float, float]:
    """HD95 and NSD of reference instance ``r`` against predicted instance ``p``, on their joint box."""
    # one background voxel around the pair keeps the erosion's border as on the full grid
    area = lc.grow(lc.union_box(ref_box, pred_box), 1, ref_ids.shape)
    to_pred, to_ref = surface_distance_pair(ref_ids[area] == r, pred_ids[area] == p, spacing)
    return pooled_hd95(to_pred, to_ref), surface_dice(to_pred, to_ref, spacing)


def _summary(values: list[float], n_ref: int, n_pred: int, empty: float) -> float:
    if values:
        return float(np.mean(values))
    return math.nan if n_ref + n_pred == 0 else empty


def region_score(region: str, ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float]) -> RegionScore:
    """One region's matched-pair means (Dice, HD95, NSD), TP / FP / FN and lesion table."""
    ref_ids, pred_ids = lc.components(ref_mask), lc.components(pred_mask)
    ref_sizes, pred_sizes = _sizes(ref_ids), _sizes(pred_ids)
    matches = match_instances(ref_sizes, pred_sizes, overlap_table(ref_ids, pred_ids))
    ref_boxes, pred_boxes = ndimage.find_objects(ref_ids), ndimage.find_objects(pred_ids)
    voxel_mm3 = float(np.prod(spacing))
    found = {r: (p, d) for r, p, d in matches}
    lesions, dices, hd95s, nsds = [], [], [], []
    for r in sorted(ref_sizes):
        if r in found:
            p, dice = found[r]
            hd95, nsd = pair_metrics(ref_ids, pred_ids, r, p, ref_boxes[r - 1], pred_boxes[p - 1], spacing)
            dices.append(dice), hd95s.append(hd95), nsds.append(nsd)
            lesions.append(Lesion(region, r, ref_sizes[r] * voxel_mm3, (p,), dice, hd95, True))
        else:
            lesions.append(Lesion(region, r, ref_sizes[r] * voxel_mm3, (), 0.0, HD95_PENALTY, False))
    n_ref, n_pred, tp = len(ref_sizes), len(pred_sizes), len(matches)
    hd95 = _summary(hd95s, n_ref, n_pred, math.inf)
    return RegionScore(region, _summary(dices, n_ref, n_pred, 0.0), HD95_PENALTY if math.isinf(hd95) else hd95,
                       tp, n_pred - tp, n_ref - tp, tuple(lesions), nsd=_summary(nsds, n_ref, n_pred, 0.0))


def score_panoptic(pred_label: np.ndarray, ref_label: np.ndarray, scheme: LabelScheme,
                   spacing: Sequence[float]) -> list[RegionScore]:
    """Every region's scores of one case, label maps in ``scheme``'s values."""
    pred, ref = brats2023_labels(pred_label, scheme), brats2023_labels(ref_label, scheme)
    box = lc.bounding_box((pred > 0) | (ref > 0), margin=1)
    if box is not None:
        pred, ref = pred[box], ref[box]
    return [region_score(region, tissue_mask(ref, region), tissue_mask(pred, region), spacing)
            for region in REGIONS]
