"""Label schemes, regions, and label files: whole numbers of the format's set, never rounded."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from glioseg.data.cases import checked_label_counts, read_label, value_counts
from glioseg.data.io import DataError
from glioseg.data.labels import (
    REGIONS, SCHEMES, class_values, classes_to_labels, classes_to_regions, get_scheme,
    labels_to_classes, labels_to_regions, region_volumes_ml, regions_to_labels,
)


def test_region_tables_follow_labels_md():
    assert SCHEMES["msd"].regions == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    assert SCHEMES["brats"].regions == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert SCHEMES["brats2023"].regions == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert SCHEMES["brats2013"].regions == {"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)}
    assert (SCHEMES["msd"].edema, SCHEMES["msd"].core, SCHEMES["msd"].enhancing) == (1, 2, 3)
    assert (SCHEMES["brats"].edema, SCHEMES["brats"].core, SCHEMES["brats"].enhancing) == (2, 1, 4)
    assert SCHEMES["brats"].allowed == {0, 1, 2, 4}
    with pytest.raises(ValueError, match="unknown label scheme 'nope'; known: brats, brats2013"):
        get_scheme("nope")


@pytest.mark.parametrize("name", ["msd", "brats", "brats2023", "brats2013"])
def test_regions_are_nested_and_round_trip(name, case_arrays):
    scheme = get_scheme(name)
    _, label = case_arrays(scheme=name)
    regions = labels_to_regions(label, scheme)
    assert regions.shape == (3, *label.shape) and regions.dtype == bool
    wt, tc, et = regions
    assert (et <= tc).all() and (tc <= wt).all() and et.any()
    back = regions_to_labels(regions, scheme)
    assert back.dtype == np.uint8
    assert np.array_equal(labels_to_regions(back, scheme), regions)


def test_regions_to_labels_lets_enhancing_win_and_checks_shape():
    scheme = get_scheme("brats")
    regions = np.zeros((3, 2, 1, 1), dtype=bool)
    regions[2, 0] = True  # ET without WT or TC
    regions[0, 1] = True
    assert regions_to_labels(regions, scheme).ravel().tolist() == [4, 2]
    with pytest.raises(ValueError, match=r"regions must have shape \(3, ...\)"):
        regions_to_labels(np.zeros((2, 4, 4)), scheme)


def test_msd_enhancing_is_label_3_not_2():
    # The bug labels.md warns about: scoring "enhancing" on MSD's non-enhancing label 2.
    label = np.array([0, 1, 2, 3])
    assert labels_to_regions(label, get_scheme("msd"))[REGIONS.index("ET")].tolist() == [False, False, False, True]


def test_volumes_classes_and_value_checks():
    scheme = get_scheme("brats")
    label = np.array([[[0, 1, 2, 4, 4]]], dtype=np.uint8)
    assert region_volumes_ml(label, scheme, (1.0, 2.0, 0.5)) == {"WT": 4e-3, "TC": 3e-3, "ET": 2e-3}
    assert class_values(scheme) == (0, 1, 2, 4)
    classes = labels_to_classes(label, scheme)
    assert classes.tolist() == [[[0, 1, 2, 3, 3]]] and classes.dtype == np.int64
    assert np.array_equal(classes_to_labels(classes, scheme), label)
    assert np.array_equal(classes_to_regions(classes, scheme), labels_to_regions(label, scheme))


def test_value_counts_for_integer_and_float_arrays():
    assert value_counts(np.array([0, 0, 4, 2], dtype=np.uint8)) == {0: 2, 2: 1, 4: 1}
    assert value_counts(np.array([-1, 3, 3], dtype=np.int16)) == {-1: 1, 3: 2}
    counts = value_counts(np.array([0.0, 1.0, 1.5], dtype=np.float32))
    assert counts == {0: 1, 1: 1, 1.5: 1} and isinstance(next(iter(counts)), int)


@pytest.mark.parametrize("values, message", [
    ([0, 1.4999, 1.4999, 3.7], r"label values are not whole numbers: 1.4999 \(2 voxels\), 3.7 \(1 voxel\); "
                               r"expected whole numbers from the brats scheme \[0, 1, 2, 4\]"),
    ([0, 255, 255, 1], r"label values not in the brats scheme: 255 \(2 voxels\)"),
    ([0, 3, 2], r"label values not in the brats scheme: 3 \(1 voxel\)"),
])
def test_checked_label_counts_reports_values_and_counts(values, message):
    with pytest.raises(DataError, match=rf"seg.nii.gz: {message}"):
        checked_label_counts("seg.nii.gz", np.array(values, dtype=np.float32), get_scheme("brats"))


def test_many_offending_values_are_summarised():
    with pytest.raises(DataError, match=r"13 \(1 voxel\) and 86 more values; expected"):
        checked_label_counts("x", np.arange(100, dtype=np.int32), get_scheme("brats"))


def _label_file(tmp_path, nifti, array, name="seg.nii.gz", **fields):
    return nifti(tmp_path / name, array, **fields)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_label_files_of_any_integer_or_whole_float_dtype_read_as_uint8(tmp_path, nifti, case_arrays, dtype):
    _, label = case_arrays()
    image, counts = read_label(_label_file(tmp_path, nifti, label.astype(dtype)), get_scheme("brats"))
    assert image.array.dtype == np.uint8 and np.array_equal(image.array, label)
    assert counts == {v: int((label == v).sum()) for v in (0, 1, 2, 4)}


def test_float_label_file_with_fractions_is_an_error(tmp_path, nifti, case_arrays):
    _, label = case_arrays()
    bad = label.astype(np.float32)
    bad[label == 1] = 1.4999
    bad[0, 0, 0] = 3.7
    path = _label_file(tmp_path, nifti, bad)
    with pytest.raises(DataError, match=rf"seg.nii.gz: label values are not whole numbers: 1.4999 "
                                        rf"\({int((label == 1).sum())} voxels\), 3.7 \(1 voxel\)"):
        read_label(path, get_scheme("brats"))


def test_scaled_label_file_is_judged_on_scaled_values(tmp_path, nifti, case_arrays):
    _, label = case_arrays()
    path = _label_file(tmp_path, nifti, label, scl_slope=0.5, scl_inter=0.0)
    with pytest.raises(DataError, match=r"label values are not whole numbers: 0.5 \(\d+ voxels\)"):
        read_label(path, get_scheme("brats"))
    doubled = _label_file(tmp_path, nifti, label * 2, name="x2.nii.gz", scl_slope=0.5, scl_inter=0.0)
    assert np.array_equal(read_label(doubled, get_scheme("brats"))[0].array, label)


def test_label_4_in_an_msd_file_and_255_masks_are_errors(tmp_path, nifti, case_arrays):
    _, label = case_arrays(scheme="msd")
    with_four = label.copy()
    with_four[0, 0, :4] = 4
    with pytest.raises(DataError, match=r"label values not in the msd scheme: 4 \(4 voxels\); "
                                        r"expected whole numbers from the msd scheme \[0, 1, 2, 3\]"):
        read_label(_label_file(tmp_path, nifti, with_four), get_scheme("msd"))
    mask = np.where(label > 0, 255, 0).astype(np.uint8)
    with pytest.raises(DataError, match=rf"label values not in the brats scheme: 255 \({int((label > 0).sum())} voxels\)"):
        read_label(_label_file(tmp_path, nifti, mask, name="mask.nii.gz"), get_scheme("brats"))


def test_label_file_must_be_3d(tmp_path, nifti, case_arrays):
    _, label = case_arrays()
    path = _label_file(tmp_path, nifti, np.stack([label, label], axis=-1))
    with pytest.raises(DataError, match=r"label has shape \(24, 24, 16, 2\); expected a 3-D volume"):
        read_label(path, get_scheme("brats"))


def test_label_with_nan_is_rejected_as_non_finite(tmp_path, nifti, case_arrays):
    _, label = case_arrays()
    bad = label.astype(np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"non-finite voxels: 1 of 9216 .* first at index \(1, 2, 3\)"):
        read_label(_label_file(tmp_path, nifti, bad), get_scheme("brats"))


def test_background_only_label_reads(tmp_path, nifti):
    path = _label_file(tmp_path, nifti, np.zeros((4, 4, 4), dtype=np.uint8))
    assert read_label(path, get_scheme("brats"))[1] == {0: 64}
    assert int(nib.load(path).header["datatype"]) == 2
