"""Oracle of the BraTS 2024 glioma lesion-wise evaluation (``metrics_GLI.py``).

Source: github.com/rachitsaluja/BraTS-2024-Metrics, ``metrics_GLI.py`` at commit
9e8879a9201b9b6f2e069eb07e2acb6d4dee34b6, Apache License 2.0 (the licence of the BraTS metrics
repositories): ``get_TissueWiseSeg``, ``save_tmp_files`` (grouping of reference and prediction,
removal of small predicted groups), ``get_touching_labels``, ``relabel_nifti_image``,
``reorder_labels_nifti``, ``combine_lesions_*``, ``get_LesionWiseScores`` and
``get_LesionWiseResults``, re-stated on arrays: the script passes every intermediate map through a
NIfTI file in ``./tmp_gt`` / ``./tmp_pred``; here they stay in memory with the same values. The
script's quirks are kept as they are: the tissue name "SFNH" where SNFH is meant (SNFH gets
dilation 3, not 5), a merge only when more than one pair of lesions touches, and
``combine_lesions_tissues`` running twice over the unmerged maps (the second pass repeats the first).
Left out: the legacy whole-region metrics and the NSD columns (medpy), which glioseg does not report.
"""
from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from .brats2023 import case_scores, combined_by_dilation, lesion_scores
from .common import as_read_by_nibabel

TISSUE_LIST = ["WT", "TC", "NETC", "SNFH", "ET", "RC"]
PENALTY = 337.0


def tissue(label: np.ndarray, name: str) -> np.ndarray:
    if name == "WT":
        return ((label >= 1) & (label <= 3)).astype(float)
    if name == "TC":
        return ((label == 1) | (label == 3)).astype(float)
    return (label == {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}[name]).astype(float)


def dilation_of(name: str) -> int:
    return 5 if (name == "SFNH") | (name == "NETC") | (name == "RC") else 3  # "SFNH" as in the script


def grouped(mask: np.ndarray, dil_factor: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(3, 2)
    cc = cc3d.connected_components(mask, connectivity=26)
    dilated = ndimage.binary_dilation(mask, structure=structure, iterations=dil_factor)
    return combined_by_dilation(cc3d.connected_components(dilated, connectivity=26), cc)


def drop_small(labels: np.ndarray, threshold: int) -> np.ndarray:
    values, counts = np.unique(labels, return_counts=True)
    return np.where(np.isin(labels, values[counts <= threshold], invert=True), labels, 0)


def touching_labels(data1: np.ndarray, data2: np.ndarray) -> set:
    structure = ndimage.generate_binary_structure(3, 2)
    pairs = set()
    for label1 in np.unique(data1)[1:]:
        mask1 = data1 == label1
        for label2 in np.unique(data2)[1:]:
            mask2 = data2 == label2
            if np.any(ndimage.binary_dilation(mask1, structure) & mask2) or \
                    np.any(ndimage.binary_dilation(mask2, structure) & mask1):
                pairs.add((label1, label2))
    return pairs


def relabel(pairs: set, data: np.ndarray) -> np.ndarray:
    current = int(np.max(data)) + 1
    seen, mapping = {}, {}
    for _, common in sorted(pairs):
        if common not in seen:
            seen[common] = current
            current += 1
    for original, common in sorted(pairs):
        if original not in mapping:
            mapping[original] = seen[common]
    out = np.copy(data)
    for original, new in mapping.items():
        out[data == original] = new
    return out.astype(np.int32)


def merged_with(data: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """One ``combine_lesions_X``: merge by each other tissue in turn, when more than one pair touches."""
    for other in others:
        pairs = touching_labels(data, other)
        if len(pairs) > 1:
            data = relabel(pairs, data)
    return data


def reorder(data: np.ndarray) -> np.ndarray:
    labels = np.unique(data)
    labels.sort()
    if labels[0] == 0:
        labels = labels[1:]
    start = int(np.max(data)) + 1
    temporary = {label: i + start for i, label in enumerate(labels)}
    staged = np.copy(data)
    for original, temp in temporary.items():
        staged[data == original] = temp
    final = {temp: i + 1 for i, temp in enumerate(sorted(temporary.values()))}
    out = np.copy(staged)
    for temp, new in final.items():
        out[staged == temp] = new
    return out.astype(np.int32)


def combine_tissues(maps: dict) -> dict:
    out = dict(maps)
    for _ in range(2):  # as the script: both passes start from the unmerged maps
        out["NETC"] = merged_with(maps["NETC"], [maps["ET"], maps["RC"]])
        out["ET"] = merged_with(maps["ET"], [maps["NETC"], maps["RC"]])
        out["RC"] = merged_with(maps["RC"], [maps["ET"], maps["NETC"]])
        out["SNFH"] = merged_with(maps["SNFH"], [maps["ET"], maps["RC"], maps["NETC"]])
    for name in ("ET", "NETC", "RC", "SNFH"):
        out[name] = reorder(out[name])
    return out


def evaluate(pred_label, gt_label, spacing=(1.0, 1.0, 1.0)):
    """Per region of BraTS 2023+ label maps: the case scores and the lesion rows."""
    pred_label, gt_label = as_read_by_nibabel(pred_label), as_read_by_nibabel(gt_label)
    gt_maps, pred_maps = {}, {}
    for name in TISSUE_LIST:
        gt_maps[name] = grouped(np.asfortranarray(tissue(gt_label, name)), dilation_of(name))
        threshold = 10 if name == "ET" else 20
        pred_maps[name] = drop_small(grouped(np.asfortranarray(tissue(pred_label, name)), dilation_of(name)),
                                     threshold)
    gt_maps, pred_maps = combine_tissues(gt_maps), combine_tissues(pred_maps)
    out = {}
    for name in TISSUE_LIST:
        threshold = 10 if name == "ET" else 20
        gt_cc, pred_cc = gt_maps[name].astype(np.int32), pred_maps[name].astype(np.int32)
        rows, matched, predicted = lesion_scores(None, None, spacing, dilation_of(name),
                                                 pred_cc=pred_cc, gt_label_cc=gt_cc)
        out[name] = case_scores(rows, matched, predicted, threshold, PENALTY)
    return out
