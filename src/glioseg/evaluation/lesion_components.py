"""Connected components of lesion masks, as the BraTS 2023-2024 lesion-wise evaluations build them.

Pure functions on label arrays, done on bounding boxes instead of the full grid:

- :func:`components`: 26-connected components (cc3d), numbered in the order a Fortran-order scan
  first meets them. The official scripts read NIfTI with nibabel, whose arrays are Fortran-ordered,
  and cc3d numbers components in memory order; the numbers matter because the 2024 rules merge
  lesions by comparing them (:func:`relabel_touching`).
- :func:`group_by_dilation`: every voxel of a mask gets the number of its component in the mask
  dilated ``iterations`` times by the 18-neighbour structure (nearby lesions become one); numbered
  in C order, as scipy's dilation hands cc3d a C-ordered array.
- :func:`touching_pairs`, :func:`relabel_touching`, :func:`reorder`: the 2024 rule that merges
  lesions of one tissue that touch the same lesion of another tissue.

Work is confined to the mask's bounding box grown by the dilation: a dilation by ``n`` cannot reach
farther than ``n`` voxels, and scipy's dilation treats the grid's edge as background, as a crop
clipped at the grid's edge does.
"""
from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

#: The 18-neighbour structure (``generate_binary_structure(3, 2)``) of the BraTS dilations.
STRUCTURE_18 = ndimage.generate_binary_structure(3, 2)
#: One of each pair of opposite 18-neighbour offsets, and the voxel itself.
_HALF_OFFSETS = tuple(o for o in (tuple(int(v) - 1 for v in p) for p in np.argwhere(STRUCTURE_18))
                      if o >= (0, 0, 0))

Box = tuple[slice, ...]


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box | None:
    """Bounding box of the non-zero voxels grown by ``margin`` and clipped to the grid; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def grow(box: Box, margin: int, shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def union_box(a: Box, b: Box) -> Box:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def components(mask: np.ndarray) -> np.ndarray:
    """26-connected components of a boolean mask (uint32), numbered in Fortran scan order."""
    labels = np.zeros(mask.shape, dtype=np.uint32)
    box = bounding_box(mask)
    if box is not None:
        # A crop keeps the scan order of the voxels it holds, so the numbers are the full grid's.
        labels[box] = cc3d.connected_components(np.asfortranarray(mask[box]), connectivity=26)
    return labels


def group_by_dilation(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Each voxel of ``mask`` labelled by its component in ``mask`` dilated ``iterations`` times."""
    labels = np.zeros(mask.shape, dtype=np.uint32)
    box = bounding_box(mask, margin=iterations)
    if box is None:
        return labels
    crop = mask[box]
    dilated = ndimage.binary_dilation(crop, structure=STRUCTURE_18, iterations=iterations) if iterations else crop
    # scipy returns the dilation C-ordered whatever its input, so the scripts number groups in C order
    grouped = cc3d.connected_components(np.ascontiguousarray(dilated), connectivity=26)
    labels[box] = np.where(crop, grouped, 0)
    return labels


def drop_small(labels: np.ndarray, max_voxels: int) -> np.ndarray:
    """``labels`` without the labels of ``max_voxels`` voxels or fewer (the 2024 prediction filter)."""
    counts = np.bincount(labels.ravel())
    keep = counts > max_voxels
    keep[0] = False
    if keep[1:].all() or not counts[1:].any():
        return labels
    lut = np.where(keep, np.arange(counts.size), 0).astype(labels.dtype)
    return lut[labels]


def _shifted(offset: tuple[int, ...], shape: tuple[int, ...], side: int) -> Box:
    """Slices that pair each voxel p (side 0) with p + offset (side 1) where both are in the grid."""
    return tuple(slice(max(o, 0), n + min(o, 0)) if side else slice(max(-o, 0), n - max(o, 0))
                 for o, n in zip(offset, shape))


def touching_pairs(first: np.ndarray, second: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (label of ``first``, label of ``second``) whose voxels are 18-neighbours (or the same voxel).

    The same pairs as dilating each label of one map once with the 18-neighbour structure and
    testing overlap with each label of the other, but in one pass over the shifted arrays.
    """
    box_a, box_b = bounding_box(first > 0, margin=1), bounding_box(second > 0, margin=1)
    if box_a is None or box_b is None:
        return set()
    # only where both boxes (grown by the one-voxel reach) meet can a pair touch
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(box_a, box_b))
    if any(s.start >= s.stop for s in box):
        return set()
    a, b = first[box].astype(np.int64), second[box].astype(np.int64)
    keys = []
    for offset in _HALF_OFFSETS:
        for x, y in ((a, b), (b, a)):
            u, v = x[_shifted(offset, x.shape, 0)], y[_shifted(offset, x.shape, 1)]
            hit = (u > 0) & (v > 0)
            pair = (u[hit], v[hit]) if x is a else (v[hit], u[hit])
            keys.append(pair[0] * (1 << 32) + pair[1])
    unique = np.unique(np.concatenate(keys))
    return {(int(k >> 32), int(k & 0xFFFFFFFF)) for k in unique}


def relabel_touching(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The 2024 scripts' merge of ``labels`` by the lesions of ``other`` they touch.

    Only when more than one (label, other label) pair touches: every distinct other label, in the
    order of the sorted pairs, gets a new number above the largest label; each touching label takes
    the number of the first (smallest) other label it touches. Labels touching nothing keep theirs.
    """
    pairs = sorted(touching_pairs(labels, other))
    if len(pairs) <= 1:
        return labels
    next_label = int(labels.max()) + 1
    new_of_other: dict[int, int] = {}
    for _, common in pairs:
        if common not in new_of_other:
            new_of_other[common] = next_label
            next_label += 1
    mapping: dict[int, int] = {}
    for label, common in pairs:
        mapping.setdefault(label, new_of_other[common])
    lut = np.arange(next_label, dtype=np.int64)
    for label, new in mapping.items():
        lut[label] = new
    return lut[labels]


def reorder(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in the order of their values (0 stays background)."""
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    if present.size == 0 or present[-1] == present.size:
        return labels  # already 1..n
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[present] = np.arange(1, present.size + 1)
    return lut[labels]
