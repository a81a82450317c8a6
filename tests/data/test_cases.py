"""load_case / read_case: named channels, layouts, one voxel grid per case, all problems collected."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from glioseg.data.cases import load_case, read_case
from glioseg.data.formats import discover
from glioseg.data.io import DataError

from ..conftest import BRATS2023_SUFFIX


def _case_dir(root, n=0):
    return sorted(p for p in root.iterdir() if p.is_dir())[n]


def test_load_case_stacks_named_channels_in_order(brats_root, case_arrays, affine_lps):
    dataset = discover(brats_root)
    image, label = load_case(dataset.cases[0], dataset)
    channels, expected_label = case_arrays(seed=0)
    assert image.shape == (4, 24, 24, 16) and image.array.dtype == np.float32
    for i, name in enumerate(dataset.channels):
        assert np.array_equal(image.array[i], channels[name]), name
    assert label.array.dtype == np.uint8 and np.array_equal(label.array, expected_label)
    assert np.allclose(image.affine, affine_lps()) and image.orientation == label.orientation == "LPS"


@pytest.mark.parametrize("order", [("FLAIR", "T1w", "t1gd", "T2w"), ("T2w", "t1gd", "FLAIR", "T1w")])
def test_msd_channels_come_from_dataset_json_never_from_position(make_dataset, case_arrays, order):
    dataset = discover(make_dataset("msd", cases=1, order=order))
    image, label = load_case(dataset.cases[0], dataset)
    channels, expected = case_arrays(seed=0, scheme="msd")
    for i, name in enumerate(dataset.channels):
        assert np.array_equal(image.array[i], channels[name]), name
    assert np.array_equal(label.array, expected) and set(np.unique(label.array)) == {0, 1, 2, 3}


def _rewrite_msd_image(root, array):
    path = root / "imagesTr" / "BRATS_001.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(array, img.affine, img.header), path)
    return path


def test_msd_5d_vector_layout_is_accepted(make_dataset):
    root = make_dataset("msd", cases=1)
    stack = np.asanyarray(nib.load(root / "imagesTr" / "BRATS_001.nii.gz").dataobj)
    _rewrite_msd_image(root, stack[:, :, :, None, :])
    dataset = discover(root)
    assert np.array_equal(load_case(dataset.cases[0], dataset)[0].array[0], stack[..., 0])


def test_msd_channel_count_is_checked(make_dataset):
    root = make_dataset("msd", cases=1)
    stack = np.asanyarray(nib.load(root / "imagesTr" / "BRATS_001.nii.gz").dataobj)
    _rewrite_msd_image(root, stack[..., :3])
    dataset = discover(root)
    with pytest.raises(DataError, match=r"BRATS_001.nii.gz: has 3 channel volumes \(shape \(24, 24, 16, 3\)\); "
                                        r"expected 4, one per modality \(flair, t1, t1ce, t2\)"):
        load_case(dataset.cases[0], dataset)
    _rewrite_msd_image(root, stack[..., 0])
    with pytest.raises(DataError, match=r"image has shape \(24, 24, 16\); expected a multi-channel volume"):
        load_case(dataset.cases[0], dataset)


def test_brats_channel_file_must_be_3d(brats_root, nifti, case_arrays):
    case = _case_dir(brats_root)
    channels, _ = case_arrays()
    nifti(case / f"{case.name}_t2.nii.gz", np.stack([channels["t2"]] * 2, axis=-1))
    dataset = discover(brats_root)
    with pytest.raises(DataError, match=r"_t2.nii.gz: t2 image has shape \(24, 24, 16, 2\); expected a 3-D volume"):
        load_case(dataset.cases[0], dataset)


def test_shape_mismatch_lists_each_files_shape(brats_root, nifti, case_arrays):
    case = _case_dir(brats_root)
    channels, label = case_arrays()
    nifti(case / f"{case.name}_t1.nii.gz", channels["t1"][:, :, :15])
    dataset = discover(brats_root)
    with pytest.raises(DataError, match=rf"{case.name}: shape mismatch between the case's files: flair "
                                        rf"{case.name}_flair.nii.gz \(24, 24, 16\); t1 {case.name}_t1.nii.gz "
                                        rf"\(24, 24, 15\); t1ce .*; label {case.name}_seg.nii.gz \(24, 24, 16\); "
                                        r"expected one shape"):
        load_case(dataset.cases[0], dataset)


def test_image_and_label_shape_mismatch(brats_root, nifti, case_arrays):
    case = _case_dir(brats_root)
    _, label = case_arrays()
    nifti(case / f"{case.name}_seg.nii.gz", np.pad(label, 1))
    dataset = discover(brats_root)
    with pytest.raises(DataError, match=r"shape mismatch.* label .*_seg.nii.gz \(26, 26, 18\)"):
        load_case(dataset.cases[0], dataset)


@pytest.mark.parametrize("change, orientation", [
    (lambda a: a @ np.diag([-1.0, 1, 1, 1]), "RPS"),                    # a left-right flip
    (lambda a: a @ np.diag([1.0, 1, 1.2, 1]), "LPS spacing \\[1, 1, 1.2\\]"),  # another spacing
    (lambda a: a + np.pad([[0.01]], ((0, 3), (3, 0))), "LPS"),           # 0.01 mm shift
])
def test_same_shape_other_geometry_is_an_error(brats_root, nifti, case_arrays, affine_lps, change, orientation):
    case = _case_dir(brats_root)
    channels, _ = case_arrays()
    nifti(case / f"{case.name}_t1ce.nii.gz", channels["t1ce"], change(affine_lps()))
    dataset = discover(brats_root)
    with pytest.raises(DataError, match=rf"geometry mismatch: t1ce {case.name}_t1ce.nii.gz is {orientation}.* but "
                                        rf"flair {case.name}_flair.nii.gz is LPS spacing \[1, 1, 1\] mm, origin "
                                        r"\[0, 23, 0\].*expected the same affine within 0.001 mm and 0.0001"):
        load_case(dataset.cases[0], dataset)


def test_geometry_within_tolerance_is_fine(brats_root, nifti, case_arrays, affine_lps):
    case = _case_dir(brats_root)
    channels, _ = case_arrays()
    shifted = affine_lps()
    shifted[0, 3] += 1e-4
    nifti(case / f"{case.name}_t1ce.nii.gz", channels["t1ce"], shifted)
    dataset = discover(brats_root)
    assert load_case(dataset.cases[0], dataset)[0].shape == (4, 24, 24, 16)


def test_every_problem_of_a_case_is_collected(brats_root, nifti, case_arrays):
    case = _case_dir(brats_root, 1)
    channels, _ = case_arrays(seed=1)
    flair = case / f"{case.name}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:-50])
    t2 = channels["t2"].astype(np.float32)
    t2[1, 1, 1] = np.inf
    nifti(case / f"{case.name}_t2.nii.gz", t2)
    (case / f"{case.name}_t1.nii.gz").unlink()
    dataset = discover(brats_root, strict=False)
    files = read_case(dataset.cases[1], dataset)
    messages = [str(p) for p in files.problems]
    assert len(messages) == 3, messages
    assert messages[0].endswith(f"{case.name}: missing the t1 image {case.name}_t1.nii.gz")
    assert "_flair.nii.gz: " in messages[1] and ("truncated" in messages[1] or "corrupt gzip" in messages[1])
    assert "_t2.nii.gz: non-finite voxels: 1 of 9216" in messages[2]
    with pytest.raises(DataError, match=r": 3 problems: .*missing the t1 image.* \| .*_flair.nii.gz.* \| .*_t2.nii.gz"):
        load_case(dataset.cases[1], dataset)
    assert read_case(dataset.cases[0], dataset).valid


def test_background_only_label_is_a_warning_not_an_error(brats_root, nifti, caplog):
    case = _case_dir(brats_root)
    nifti(case / f"{case.name}_seg.nii.gz", np.zeros((24, 24, 16), dtype=np.int16))
    dataset = discover(brats_root)
    files = read_case(dataset.cases[0], dataset)
    assert files.valid and files.label_counts == {0: 9216}
    assert files.warnings == [f"{case / case.name}_seg.nii.gz: label is background only (no tumour voxels)"]
    image, label = load_case(dataset.cases[0], dataset)
    assert label.array.max() == 0 and "background only" in caplog.text


def test_case_without_label(brats_root):
    case = _case_dir(brats_root)
    (case / f"{case.name}_seg.nii.gz").unlink()
    dataset = discover(brats_root)
    image, label = load_case(dataset.cases[0], dataset)
    assert label is None and image.shape == (4, 24, 24, 16)


def test_msd_file_listed_but_absent(make_dataset):
    root = make_dataset("msd", cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["label"] = "./labelsTr/BRATS_999.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = discover(root)
    with pytest.raises(DataError, match=r"BRATS_999.nii.gz: no such file"):
        load_case(dataset.cases[0], dataset)


def _brats2023_with_2021_labels(make_dataset, case_arrays, nifti):
    """A BraTS 2023-named dataset whose label files use the 2017-2021 values (4 = enhancing, no 3)."""
    root = make_dataset("brats2023", cases=1)
    case_id = next(p.name for p in root.iterdir() if p.is_dir())
    _, label = case_arrays(scheme="brats")
    assert 4 in label and 3 not in label
    nifti(root / case_id / f"{case_id}-seg.nii.gz", label)
    return root, case_id, label


def test_brats2023_names_with_2021_label_values_are_refused(make_dataset, case_arrays, nifti):
    """#23: read as 2023 (4 = resection cavity) the enhancing tumour vanished without a word."""
    root, case_id, _ = _brats2023_with_2021_labels(make_dataset, case_arrays, nifti)
    dataset = discover(root)
    with pytest.raises(DataError, match=r"-seg\.nii\.gz: holds label 4 and no label 3, the BraTS 2017-2021 "
                                        r"convention .* \{\"scheme\": \"brats\", \"cases\""):
        load_case(dataset.cases[0], dataset)


def test_a_manifest_stating_the_convention_reads_the_same_files(make_dataset, case_arrays, nifti):
    root, case_id, label = _brats2023_with_2021_labels(make_dataset, case_arrays, nifti)
    files = {"label" if c == "seg" else c: f"{case_id}/{case_id}-{s}.nii.gz" for c, s in BRATS2023_SUFFIX.items()}
    manifest = root / "cases.json"
    manifest.write_text(json.dumps({"scheme": "brats", "cases": [{"case": case_id, **files}]}))
    dataset = discover(manifest)
    _, read = load_case(dataset.cases[0], dataset)
    np.testing.assert_array_equal(read.array, label)
    assert dataset.scheme.regions["ET"] == (4,)
    # a 2024 case whose 4 really is a resection cavity is stated the same way
    manifest.write_text(json.dumps({"scheme": "brats2023", "cases": [{"case": case_id, **files}]}))
    dataset = discover(manifest)
    assert load_case(dataset.cases[0], dataset)[1] is not None


def test_brats2023_labels_with_3_and_4_are_the_2024_convention(make_dataset, case_arrays, nifti):
    root = make_dataset("brats2023", cases=1)
    case_id = next(p.name for p in root.iterdir() if p.is_dir())
    _, label = case_arrays(scheme="brats2023")
    label[0, 0, 0] = 4                                   # one voxel of resection cavity beside ET (3)
    nifti(root / case_id / f"{case_id}-seg.nii.gz", label)
    dataset = discover(root)
    assert 4 in load_case(dataset.cases[0], dataset)[1].array
