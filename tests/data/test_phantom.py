"""Synthetic phantoms: determinism, label nesting, MRI-like contrasts, BraTS layout and geometry."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data import phantom
from glioseg.data.formats import discover
from glioseg.data.io import read_image
from glioseg.data.labels import get_scheme, labels_to_regions

SHAPE = (48, 48, 40)


@pytest.fixture(scope="module")
def cases():
    return [phantom.make_case(i, seed=11, shape=SHAPE) for i in range(6)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    assert main(["phantom", str(out), "--cases", "3", "--seed", "5", "--shape", *map(str, SHAPE)]) == 0
    return out


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a, b = phantom.make_case(2, seed=3, shape=SHAPE), phantom.make_case(2, seed=3, shape=SHAPE)
    for channel in a.images:
        assert a.images[channel].tobytes() == b.images[channel].tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    other = phantom.make_case(2, seed=4, shape=SHAPE)
    assert other.images["flair"].tobytes() != a.images["flair"].tobytes()
    assert other.label.tobytes() != a.label.tobytes()


def test_labels_are_brats_values_nested_and_inside_the_brain(cases):
    scheme = get_scheme("brats")
    for case in cases:
        assert set(np.unique(case.label).tolist()) == {0, 1, 2, 4}, case.case_id
        wt, tc, et = labels_to_regions(case.label, scheme)
        assert et.any() and (tc & ~et).any() and (wt & ~tc).any()
        assert not (et & ~tc).any() and not (tc & ~wt).any()
        assert (case.tissue[wt] > 0).all(), "tumour outside the brain"


def test_images_are_int16_with_zero_background(cases):
    for case in cases:
        brain = case.tissue > 0
        for channel, image in case.images.items():
            assert image.dtype == np.int16 and image.shape == SHAPE
            assert (image[~brain] == 0).all() and (image[brain] > 0).all(), (case.case_id, channel)


def _mean(image, mask):
    return float(image[mask].mean())


def test_contrasts_have_the_intensity_relations_of_real_scans(cases):
    for case in cases:
        im, lab = case.images, case.label
        healthy = lab == 0
        csf, wm = healthy & (case.tissue == 1), healthy & (case.tissue == 3)
        edema, nec, enh = lab == 2, lab == 1, lab == 4
        core = nec | enh
        name = case.case_id
        assert _mean(im["flair"], edema) > 1.3 * _mean(im["flair"], wm), name
        assert _mean(im["flair"], csf) < 0.7 * _mean(im["flair"], wm), name
        assert _mean(im["t2"], edema) > 1.3 * _mean(im["t2"], wm), name
        assert _mean(im["t2"], csf) > 1.3 * _mean(im["t2"], wm), name
        assert _mean(im["t1"], wm) > 1.5 * _mean(im["t1"], csf), name
        assert _mean(im["t1"], core) < 0.85 * _mean(im["t1"], wm), name
        assert _mean(im["t1ce"], enh) > 1.5 * _mean(im["t1ce"], nec), name
        assert _mean(im["t1ce"], enh) > _mean(im["t1ce"], wm), name


def test_sites_differ_in_intensity_scale(cases):
    wm_t1 = {}
    for case in cases:
        wm = (case.label == 0) & (case.tissue == 3)
        wm_t1.setdefault(case.site, []).append(_mean(case.images["t1"], wm))
    assert set(wm_t1) == set(phantom.SITES)
    assert min(wm_t1["SITEB"]) > 2 * max(wm_t1["SITEC"])


def test_brats_affine_keeps_the_field_of_view():
    full = phantom.brats_affine((240, 240, 155))
    assert np.array_equal(full, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    small = phantom.brats_affine(SHAPE)
    # The outer voxel corners (index -0.5 and n-0.5) land where the 1 mm grid's corners are.
    for corner_small, corner_full in (((-0.5,) * 3, (-0.5,) * 3),
                                      (tuple(n - 0.5 for n in SHAPE), (239.5, 239.5, 154.5))):
        assert np.allclose(small @ [*corner_small, 1], full @ [*corner_full, 1])


def test_written_dataset_is_discovered_as_brats_with_sites(written):
    dataset = discover(written)
    assert dataset.format == "brats" and dataset.scheme.name == "brats"
    assert [c.case_id for c in dataset.cases] == ["Phantom_SITEA_001", "Phantom_SITEB_002", "Phantom_SITEC_003"]
    assert [c.site for c in dataset.cases] == ["SITEA", "SITEB", "SITEC"]
    assert not dataset.ignored, "temporary .part- folders left behind"
    record = json.loads((written / "phantom.json").read_text())
    assert record["seed"] == 5 and record["shape"] == list(SHAPE)


def test_written_files_have_brats_geometry_dtypes_and_the_generated_arrays(written):
    case = discover(written).cases[1]
    expected = phantom.make_case(1, seed=5, shape=SHAPE)
    for channel, path in case.images.items():
        image = read_image(path)
        assert image.orientation == "LPS" and image.array.dtype == np.int16
        assert np.allclose(image.affine, phantom.brats_affine(SHAPE))
        assert image.array.tobytes() == expected.images[channel].tobytes()
    label = read_image(case.label)
    assert label.array.dtype == np.uint8 and label.array.tobytes() == expected.label.tobytes()
    header = nib.load(str(case.label)).header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1


def test_rewriting_replaces_cases_and_leaves_no_temporary_files(written):
    before = (written / "Phantom_SITEA_001" / "Phantom_SITEA_001_t2.nii.gz").stat().st_ino
    phantom.write_dataset(written, cases=1, seed=5, shape=SHAPE)
    assert (written / "Phantom_SITEA_001" / "Phantom_SITEA_001_t2.nii.gz").stat().st_ino != before
    assert not [p for p in written.rglob("*") if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--cases", "0"], "--cases must be at least 1"),
    (["--shape", "8", "48", "40"], "--shape must be three sizes between 16 and 512"),
])
def test_bad_arguments_fail_cleanly_without_output(tmp_path, caplog, argv, message):
    out = tmp_path / "never"
    assert main(["phantom", str(out), *argv]) == 2
    assert message in caplog.text
    assert not out.exists()


@pytest.mark.realdata
def test_template_brain_overlaps_real_brats_brains_in_the_same_grid(shared_data):
    template = phantom.load_template()
    path = shared_data / "brats18" / "Brats18_CBICA_ABM_1" / "Brats18_CBICA_ABM_1_t1.nii.gz"
    real = read_image(path)
    assert np.allclose(real.affine, phantom.brats_affine(phantom.BRATS_SHAPE))
    brain = real.array > 0
    dice = 2 * (brain & template.brain).sum() / (brain.sum() + template.brain.sum())
    assert dice > 0.85, f"template brain vs {path.name}: Dice {dice:.3f} (orientation flipped?)"


def test_bias_field_is_smooth_with_the_requested_strength():
    field = phantom.bias_field(np.random.default_rng(0), (40, 44, 36), strength=0.2)
    log = np.log(field)
    assert field.dtype == np.float32 and (field > 0).all()
    assert abs(float(log.mean())) < 1e-3  # no global scale: that is the site's
    assert 0.17 < float(log.std()) < 0.23
    for axis in range(3):  # smooth: the slope barely changes from one voxel to the next
        assert np.abs(np.diff(log, n=2, axis=axis)).max() < 0.02


def test_template_arrays_cannot_be_changed_through_a_case(cases):
    with pytest.raises(ValueError):
        cases[0].tissue[0, 0, 0] = 3
