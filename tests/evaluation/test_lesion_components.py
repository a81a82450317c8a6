"""The bounding-box shortcuts of lesion_components give the full grid's answers."""
from __future__ import annotations

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from glioseg.evaluation import lesion_components as lc

S18 = ndimage.generate_binary_structure(3, 2)


def maps(seed, shape=(14, 13, 12)):
    rng = np.random.default_rng(seed)
    a = ndimage.label(rng.random(shape) > 0.9)[0]
    b = ndimage.label(rng.random(shape) > 0.9)[0]
    b[a > 0] = 0
    return a, b


@pytest.mark.parametrize("seed", range(8))
def test_touching_pairs_are_those_of_one_dilation_per_label(seed):
    a, b = maps(seed)
    expected = {(int(x), int(y)) for x in np.unique(a)[1:]
                for y in np.unique(b[ndimage.binary_dilation(a == x, S18)]) if y > 0}
    assert lc.touching_pairs(a, b) == expected and expected


@pytest.mark.parametrize("seed", range(4))
def test_grouping_and_components_number_as_on_the_full_grid(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 36, 30), bool)
    mask[5:35, 6:30, 4:26] = ndimage.gaussian_filter(rng.standard_normal((30, 24, 22)), 1.0) > 0.9
    dilated = ndimage.binary_dilation(np.asfortranarray(mask.astype(float)), S18, iterations=3)
    full = cc3d.connected_components(dilated, connectivity=26)  # scipy hands cc3d a C-ordered array
    assert np.array_equal(lc.group_by_dilation(mask, 3), np.where(mask, full, 0))
    assert np.array_equal(lc.components(mask), cc3d.connected_components(np.asfortranarray(mask), connectivity=26))


def test_relabel_merges_by_the_first_touched_label_only_with_two_pairs_or_more():
    labels = np.zeros((1, 1, 9), np.int64)
    other = np.zeros_like(labels)
    labels[0, 0, [0, 4, 8]] = [1, 2, 3]
    other[0, 0, [1, 3, 5, 7]] = [5, 5, 6, 6]
    # pairs (1,5) (2,5) (2,6) (3,6): 5 → 4, 6 → 5; label 2 takes its first other label's number
    assert lc.relabel_touching(labels, other)[0, 0, [0, 4, 8]].tolist() == [4, 4, 5]
    single = np.zeros_like(other)
    single[0, 0, 1] = 5
    assert lc.relabel_touching(labels, single) is labels  # one pair: left as it is
    assert lc.reorder(lc.relabel_touching(labels, other))[0, 0, [0, 4, 8]].tolist() == [1, 1, 2]


def test_drop_small_removes_groups_of_threshold_voxels_or_fewer():
    labels = np.array([0, 1, 1, 2, 2, 2, 4], dtype=np.uint32).reshape(1, 1, 7)
    assert lc.drop_small(labels, 2).ravel().tolist() == [0, 0, 0, 2, 2, 2, 0]
