"""Lesion-wise BraTS scores of the 2023 and 2024 official scripts, computed on bounding boxes.

Both generations, per region: reference lesions are the 26-connected components of the reference
grouped by dilation (:func:`~glioseg.evaluation.lesion_components.group_by_dilation`); each lesion
is matched to every predicted component that meets the lesion dilated ``match_dilation`` times
(18-neighbour structure); its Dice and HD95 (DeepMind's robust Hausdorff) are those of the lesion
against the union of its matches, Dice 0 and HD95 ``penalty`` when it has none. Predicted
components matched to no lesion are false positives. Lesions of ``threshold`` mm³ or less leave the
case score (and its TP/FN counts), but the components they match are not false positives. The case
score is the sum over kept lesions, plus ``penalty`` per false positive for HD95, divided by
(kept lesions + false positives); with nothing to count, Dice 1 and HD95 0.

The 2024 script differs (:data:`GENERATIONS`): regions NETC, SNFH and RC besides WT, TC and ET;
predicted components are grouped by dilation too, and groups of ``threshold`` voxels or fewer are
removed; lesions of NETC, SNFH, ET and RC are merged across tissues
(:func:`combine_tissues`); HD95 penalty 337. Its quirks are kept and named: the script spells SNFH
"SFNH" where it picks the 5-voxel dilation of NETC and RC, so SNFH is dilated 3 times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from glioseg.data.labels import LabelScheme
from glioseg.evaluation import lesion_components as lc
from glioseg.evaluation.lesion_distances import robust_hd95

#: BraTS 2023+ labels of every tissue region (1 NETC, 2 SNFH, 3 ET, 4 RC).
TISSUES: dict[str, tuple[int, ...]] = {
    "WT": (1, 2, 3), "TC": (1, 3), "NETC": (1,), "SNFH": (2,), "ET": (3,), "RC": (4,),
}


@dataclass(frozen=True)
class Rules:
    """One generation's parameters for the glioma (GLI) challenge."""

    name: str
    regions: tuple[str, ...]
    dilation: dict[str, int]          # grouping and matching dilation per region
    threshold: dict[str, float]       # lesions of this volume (mm³) or less are not counted
    penalty: float                    # HD95 of a missed lesion or a false positive (mm)
    group_prediction: bool            # 2024: predictions grouped by dilation, small groups removed
    combine_tissues: bool             # 2024: NETC/SNFH/ET/RC lesions merged across tissues
    source: str


GENERATIONS: dict[str, Rules] = {
    "lesion-2023": Rules(
        name="lesion-2023", regions=("WT", "TC", "ET"),
        dilation={"WT": 3, "TC": 3, "ET": 3}, threshold={"WT": 50, "TC": 50, "ET": 50}, penalty=374.0,
        group_prediction=False, combine_tissues=False,
        source="rachitsaluja/BraTS-2023-Metrics (brats_2023_metrics/surface_distance/brats_metrics.py, "
               "challenge BraTS-GLI: dilation 3, threshold 50)"),
    "lesion-2024": Rules(
        name="lesion-2024", regions=("WT", "TC", "NETC", "SNFH", "ET", "RC"),
        # "SFNH" in the script: SNFH gets 3 where NETC and RC get 5.
        dilation={"WT": 3, "TC": 3, "NETC": 5, "SNFH": 3, "ET": 3, "RC": 5},
        threshold={"WT": 20, "TC": 20, "NETC": 20, "SNFH": 20, "ET": 10, "RC": 20}, penalty=337.0,
        group_prediction=True, combine_tissues=True,
        source="rachitsaluja/BraTS-2024-Metrics (metrics_GLI.py)"),
}


@dataclass(frozen=True)
class Lesion:
    """One reference lesion: its number, volume (mm³), matched predicted components, Dice, HD95."""

    region: str
    lesion: int
    volume_mm3: float
    matched: tuple[int, ...]
    dice: float
    hd95: float
    counted: bool


@dataclass(frozen=True)
class RegionScore:
    """One region's case scores: lesion-wise Dice and HD95 (mm), counted TP / FP / FN, its lesions."""

    region: str
    dice: float
    hd95: float
    tp: int
    fp: int
    fn: int
    lesions: tuple[Lesion, ...]
    nsd: float = math.nan             # 2025 only (matched-pair mean)

    @property
    def rq(self) -> float:
        """Recognition quality TP / (TP + ½FP + ½FN), panoptica's: 0 without TP, NaN with nothing at all."""
        if self.tp == 0:
            return 0.0 if self.fp + self.fn > 0 else math.nan
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn)


def brats2023_labels(label: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """A label map in BraTS 2023+ values: TC−ET → 1 (NETC), WT−TC → 2 (SNFH), ET → 3, other labels → 4 (RC)."""
    lut = np.full(max(scheme.allowed) + 1, 4, dtype=np.uint8)
    lut[0] = 0
    for region, value in (("WT", 2), ("TC", 1), ("ET", 3)):  # nested: each overwrites the one before
        lut[list(scheme.regions[region])] = value
    return lut[np.asarray(label)]


def tissue_mask(label: np.ndarray, region: str) -> np.ndarray:
    """The mask of a :data:`TISSUES` region in a BraTS 2023+ label map (a table look-up, not ``np.isin``)."""
    lut = np.zeros(5, dtype=bool)
    lut[list(TISSUES[region])] = True
    return lut[label]


def combine_tissues(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 2024 merge: NETC, SNFH, ET and RC lesions touching the same lesion of another tissue
    become one (:func:`~glioseg.evaluation.lesion_components.relabel_touching`, against the other
    tissues' maps as they were before merging, in the script's order), then each is renumbered 1..n."""
    relabel = lc.relabel_touching
    merged = {
        "NETC": relabel(relabel(maps["NETC"], maps["ET"]), maps["RC"]),
        "ET": relabel(relabel(maps["ET"], maps["NETC"]), maps["RC"]),
        "RC": relabel(relabel(maps["RC"], maps["ET"]), maps["NETC"]),
        "SNFH": relabel(relabel(relabel(maps["SNFH"], maps["ET"]), maps["RC"]), maps["NETC"]),
    }
    return {**maps, **{tissue: lc.reorder(labels) for tissue, labels in merged.items()}}


def lesion_maps(label: np.ndarray, rules: Rules, prediction: bool) -> dict[str, np.ndarray]:
    """Numbered lesions (reference) or components (prediction) of every region of a BraTS 2023+ label map."""
    maps = {}
    for region in rules.regions:
        mask = tissue_mask(label, region)
        if prediction and not rules.group_prediction:
            maps[region] = lc.components(mask)
            continue
        grouped = lc.group_by_dilation(mask, rules.dilation[region])
        maps[region] = lc.drop_small(grouped, int(rules.threshold[region])) if prediction else grouped
    return combine_tissues(maps) if rules.combine_tissues else maps


def match_lesions(ref_ids: np.ndarray, pred_ids: np.ndarray, dilation: int, spacing: Sequence[float],
                  region: str = "", threshold: float = 0.0) -> tuple[list[Lesion], list[int]]:
    """Every reference lesion scored against its matched components, and the unmatched components."""
    ref_boxes, pred_boxes = ndimage.find_objects(ref_ids), ndimage.find_objects(pred_ids)
    voxel_mm3 = float(np.prod(spacing))
    lesions, matched_any = [], set()
    for number, box in enumerate(ref_boxes, start=1):
        if box is None:
            continue
        near = lc.grow(box, dilation, ref_ids.shape)
        zone = ndimage.binary_dilation(ref_ids[near] == number, lc.STRUCTURE_18, iterations=dilation)
        matched = np.unique(pred_ids[near][zone])
        matched = tuple(int(m) for m in matched if m > 0)
        matched_any.update(matched)
        area = box
        for m in matched:
            area = lc.union_box(area, pred_boxes[m - 1])
        lesion = ref_ids[area] == number
        chosen = np.zeros(int(pred_ids.max()) + 1, dtype=bool)
        chosen[list(matched)] = True
        union = chosen[pred_ids[area]]
        size = int(lesion.sum())
        dice = 2.0 * int(np.count_nonzero(lesion & union)) / (size + int(union.sum()))
        volume = size * voxel_mm3
        lesions.append(Lesion(region, number, volume, matched, dice, robust_hd95(lesion, union, spacing),
                              volume > threshold))
    unmatched = [n for n, box in enumerate(pred_boxes, start=1) if box is not None and n not in matched_any]
    return lesions, unmatched


def case_score(region: str, lesions: list[Lesion], false_positives: int, penalty: float) -> RegionScore:
    """The script's per-case lesion-wise Dice and HD95 with its TP / FP / FN counts."""
    kept = [lesion for lesion in lesions if lesion.counted]
    count = len(kept) + false_positives
    dice = sum(lesion.dice for lesion in kept) / count if count else 1.0
    hd95 = (sum(_penalised(lesion.hd95, penalty) for lesion in kept) + penalty * false_positives) / count \
        if count else 0.0
    tp = sum(1 for lesion in kept if lesion.matched)
    return RegionScore(region, dice, hd95, tp, false_positives, len(kept) - tp, tuple(lesions))


def _penalised(hd95: float, penalty: float) -> float:
    return penalty if math.isinf(hd95) else hd95


def score_lesions(pred_label: np.ndarray, ref_label: np.ndarray, scheme: LabelScheme,
                  spacing: Sequence[float], rules: Rules) -> list[RegionScore]:
    """One generation's lesion-wise scores of every region of one case (label maps in ``scheme``)."""
    pred, ref = brats2023_labels(pred_label, scheme), brats2023_labels(ref_label, scheme)
    margin = max(rules.dilation.values()) + 1
    box = lc.bounding_box((pred > 0) | (ref > 0), margin=margin)
    if box is None:
        return [case_score(region, [], 0, rules.penalty) for region in rules.regions]
    pred, ref = pred[box], ref[box]
    pred_maps, ref_maps = lesion_maps(pred, rules, prediction=True), lesion_maps(ref, rules, prediction=False)
    scores = []
    for region in rules.regions:
        lesions, unmatched = match_lesions(ref_maps[region], pred_maps[region], rules.dilation[region],
                                           spacing, region, rules.threshold[region])
        scores.append(case_score(region, lesions, len(unmatched), rules.penalty))
    return scores
