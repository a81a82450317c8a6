"""Synthetic label maps (BraTS 2023+ values) that hit every rule of the lesion-wise evaluations."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SHAPE = (48, 44, 36)


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def tumour(shape, centre, radius, rng) -> np.ndarray:
    """Nested labels: SNFH 2 around NETC 1 with ET 3 on the core's rim, slightly irregular."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(shape), centre))) + 0.8 * noise / noise.std()
    label = np.zeros(shape, np.uint8)
    label[dist <= radius] = 2
    label[dist <= radius * 0.6] = 3
    label[dist <= radius * 0.35] = 1
    return label


def random_case(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A reference with 1-3 tumours, some satellites and maybe a cavity; a perturbed prediction."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(1, 4)):
        centre = rng.uniform(8, np.array(shape) - 8)
        ref = np.maximum(ref, tumour(shape, centre, rng.uniform(3, 8), rng))
    for _ in range(rng.integers(0, 5)):
        ref[ball(shape, rng.uniform(3, np.array(shape) - 3), rng.uniform(0.8, 2.5))] = rng.integers(1, 4)
    if rng.random() < 0.4:
        ref[ball(shape, rng.uniform(6, np.array(shape) - 6), rng.uniform(2, 4)) & (ref == 0)] = 4
    return ref, perturb(ref, rng)


def perturb(ref: np.ndarray, rng) -> np.ndarray:
    """A prediction from the reference: shifted, one label grown or shrunk, a label swapped, blobs added."""
    pred = np.roll(ref, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    value = int(rng.integers(1, 5))
    if rng.random() < 0.5:
        grown = ndimage.binary_dilation(pred == value, iterations=int(rng.integers(1, 3)))
        pred[grown & (pred == 0)] = value
    else:
        pred[(pred == value) & ~ndimage.binary_erosion(pred == value)] = 0
    if rng.random() < 0.3:
        pred[pred == 1] = 3
    for _ in range(rng.integers(0, 4)):
        pred[ball(ref.shape, rng.uniform(3, np.array(ref.shape) - 3), rng.uniform(0.8, 3))] = rng.integers(1, 5)
    return pred


def rule_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named cases built for one rule each (reference, prediction)."""
    s = SHAPE
    cases = {}
    # two lesions 4 voxels apart: one lesion after a 3-fold dilation; the prediction finds one half
    ref = np.zeros(s, np.uint8)
    ref[box(s, (10, 10, 10), (18, 18, 18))] = 2
    ref[box(s, (22, 10, 10), (30, 18, 18))] = 2
    pred = np.where(box(s, (9, 10, 10), (18, 19, 18)), 2, 0).astype(np.uint8)
    cases["merged_after_dilation"] = ref, pred
    # one predicted component bridging two distant lesions
    ref = np.zeros(s, np.uint8)
    ref[box(s, (5, 10, 10), (13, 18, 18))] = 3
    ref[box(s, (30, 10, 10), (38, 18, 18))] = 3
    pred = np.where(box(s, (6, 12, 12), (37, 16, 16)), 3, 0).astype(np.uint8)
    cases["component_touching_two"] = ref, pred
    # lesions at or under the thresholds (27 voxels; 50 and 20 / 10 voxels), one matched, one not,
    # and a small predicted blob away from everything (a false positive however small)
    ref = np.zeros(s, np.uint8)
    ref[box(s, (20, 20, 20), (30, 30, 30))] = 1
    ref[box(s, (5, 5, 5), (8, 8, 8))] = 1
    ref[box(s, (40, 5, 5), (43, 8, 8))] = 3
    pred = np.zeros(s, np.uint8)
    pred[box(s, (21, 20, 20), (30, 31, 30))] = 1
    pred[box(s, (5, 6, 5), (8, 9, 8))] = 1
    pred[box(s, (40, 35, 25), (44, 39, 29))] = 1
    cases["under_threshold"] = ref, pred
    # tissues touching each other (2024 merges NETC / SNFH / ET / RC lesions across tissues)
    ref = np.zeros(s, np.uint8)
    ref[box(s, (10, 10, 10), (16, 16, 16))] = 1
    ref[box(s, (30, 10, 10), (36, 16, 16))] = 1
    ref[box(s, (16, 10, 10), (30, 16, 16))] = 3
    ref[box(s, (10, 25, 10), (36, 30, 16))] = 2
    ref[box(s, (10, 30, 10), (14, 34, 14))] = 4
    ref[box(s, (30, 30, 10), (34, 34, 14))] = 4
    pred = ref.copy()
    pred[box(s, (16, 10, 10), (30, 16, 16))] = 1
    pred[box(s, (18, 12, 12), (28, 14, 14))] = 3
    cases["tissues_touching"] = ref, pred
    blob = np.where(ball(s, (24, 22, 18), 6), 2, 0).astype(np.uint8)
    blob[ball(s, (24, 22, 18), 3)] = 3
    cases["empty_reference"] = np.zeros(s, np.uint8), blob
    cases["empty_prediction"] = blob, np.zeros(s, np.uint8)
    cases["both_empty"] = np.zeros(s, np.uint8), np.zeros(s, np.uint8)
    return cases


def perturbed_label(label: np.ndarray, scheme_regions: dict[str, tuple[int, ...]], enhancing: int,
                    edema: int) -> np.ndarray:
    """A deterministic stand-in for a model's prediction of a real case (no model run needed).

    The expert label shifted by one voxel, its enhancing tumour eroded once, its smallest tumour-core
    component removed, its edema grown once, and a 6³ block of edema added 12 voxels beyond the
    tumour (a false positive).
    """
    pred = np.roll(label, (1, -1, 0), axis=(0, 1, 2))
    et = pred == enhancing
    pred[et & ~ndimage.binary_erosion(et)] = 0
    core, count = ndimage.label(np.isin(pred, scheme_regions["TC"]), ndimage.generate_binary_structure(3, 3))
    if count > 1:
        sizes = np.bincount(core.ravel())[1:]
        pred[core == 1 + int(np.argmin(sizes))] = 0
    grown = ndimage.binary_dilation(pred == edema)
    pred[grown & (pred == 0)] = edema
    hits = np.argwhere(label > 0)
    if hits.size:
        corner = np.minimum(hits.max(axis=0) + 12, np.array(label.shape) - 7)
        pred[tuple(slice(c, c + 6) for c in corner)] = edema
    return pred.astype(label.dtype)
