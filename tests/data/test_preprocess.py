"""Preprocessing: configuration, each pure step, one case, and the inverse back to the file's grid."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg.data.formats import Case, discover
from glioseg.data.cases import load_case
from glioseg.data.io import Image
from glioseg.data.labels import get_scheme, labels_to_regions, region_volumes_ml
from glioseg.data.preprocess import (
    PreprocessConfig, brain_box, check_normalised, crop, invert_ornt, normalise, orientation_to_ras,
    preprocess_case, resample, resampled_affine, reorient, reoriented_affine, to_original, uncrop,
)
from tests._cases import write_case_files

BRATS = get_scheme("brats")

LPS = np.array([[-1.0, 0, 0, 23], [0, -1.0, 0, 27], [0, 0, 1.0, 0], [0, 0, 0, 1]])
# Array axes (i, j, k) point to world (S, L, A) with 1.2 / 0.9 / 1.5 mm voxels: a permutation with flips.
PERMUTED = np.array([[0, -0.9, 0, 30], [0, 0, 1.5, -20], [1.2, 0, 0, -10], [0, 0, 0, 1]])


def synthetic(shape=(24, 28, 20), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A (4, *shape) image with an off-centre ellipsoidal 'brain' and a nested 0/1/2/4 tumour."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    centre = np.array(shape) * [0.45, 0.55, 0.5]
    radius = np.array(shape) * [0.3, 0.32, 0.35]
    r = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, radius)))
    brain = r < 1
    image = np.zeros((4, *shape), dtype=np.float32)
    for c, level in enumerate((300.0, 500.0, 450.0, 20000.0)):
        image[c][brain] = level + rng.normal(0, level / 10, brain.sum())
    label = np.zeros(shape, dtype=np.uint8)
    label[r < 0.6] = 2
    label[r < 0.4] = 1
    label[(r < 0.4) & (r > 0.25)] = 4
    return image, label


def in_memory(affine=LPS, seed=0) -> tuple[Image, Image, Case]:
    image, label = synthetic(seed=seed)
    case = Case("Brats18_TEST_001_1", {c: Path(f"/nowhere/{c}.nii.gz") for c in ("flair", "t1", "t1ce", "t2")},
                Path("/nowhere/seg.nii.gz"), "TEST")
    return Image(image, affine), Image(label, affine), case


def write_case(root: Path, affine: np.ndarray, seed=0, case_id="Brats18_TEST_001_1") -> Path:
    """One BraTS-layout case on disk (int16 images, uint8 label) with the given affine."""
    image, label = synthetic(seed=seed)
    if (root / case_id).exists():
        raise FileExistsError(root / case_id)
    write_case_files(root, case_id, image.astype(np.int16), label, affine)
    return root


def run(image, label, case, config=PreprocessConfig(), **kw):
    return preprocess_case(image, label, case, config, scheme=BRATS, inputs={}, **kw)


# ---- configuration ----

def test_config_round_trips_through_dict():
    config = PreprocessConfig(target_spacing=[1, 1.5, 2], crop_margin=3)
    assert config.target_spacing == (1.0, 1.5, 2.0)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"preprocess: unknown key\(s\) spacing; valid keys: target_spacing"):
        PreprocessConfig.from_dict({"spacing": [1, 1, 1]})
    with pytest.raises(ValueError, match="target_spacing must be 3 positive"):
        PreprocessConfig(target_spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="crop_margin must be a whole number"):
        PreprocessConfig(crop_margin=-1)
    with pytest.raises(ValueError, match="normalisation 'minmax' is unknown"):
        PreprocessConfig(normalisation="minmax")


# ---- geometry ----

@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted"])
def test_reorient_reaches_ras_keeps_world_positions_and_inverts(affine):
    image, _ = synthetic()
    ornt = orientation_to_ras(affine)
    ras = reorient(image, ornt)
    ras_affine = reoriented_affine(affine, ornt, image.shape[1:])
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    # The same world point holds the same value before and after.
    for index in np.random.default_rng(1).integers(0, image.shape[1:], size=(50, 3)):
        world = affine @ np.r_[index, 1]
        j = np.rint(np.linalg.solve(ras_affine, world)[:3]).astype(int)
        np.testing.assert_array_equal(ras[(slice(None), *j)], image[(slice(None), *index)])
    np.testing.assert_array_equal(reorient(ras, invert_ornt(ornt)), image)


def test_brain_box_margin_label_and_empty():
    image = np.zeros((2, 10, 12, 8))
    image[1, 3:5, 4:9, 2] = 1
    assert brain_box(image) == ((3, 5), (4, 9), (2, 3))
    assert brain_box(image, margin=3) == ((0, 8), (1, 12), (0, 6))
    label = np.zeros((10, 12, 8))
    label[7, 4, 2] = 2  # a labelled voxel outside the nonzero image must stay inside the crop
    assert brain_box(image, label=label) == ((3, 8), (4, 9), (2, 3))
    with pytest.raises(ValueError, match="zero everywhere"):
        brain_box(np.zeros((2, 4, 4, 4)))


def test_uncrop_inverts_crop():
    image, _ = synthetic()
    box = brain_box(image, margin=1)
    cropped = crop(image, box)
    restored = uncrop(cropped, box, image.shape[1:])
    np.testing.assert_array_equal(restored, image)  # everything outside the box was zero


def test_resample_nearest_keeps_labels_and_linear_follows_the_affine():
    _, label = synthetic()
    small = resample(label, (12, 14, 10), order=0)
    assert small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1, 2, 4}
    # A linear function of world position is reproduced exactly by trilinear resampling
    # wherever no clamping at the border happens: this pins the voxel-centre convention.
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ramp = (np.indices((20, 20, 20)) * np.array([1.0, 2.0, -0.5])[:, None, None, None]).sum(0)
    up = resample(ramp[None], (40, 30, 20), order=1)[0]
    new_affine = resampled_affine(affine, (20, 20, 20), (40, 30, 20))
    idx = np.indices((40, 30, 20)).reshape(3, -1)
    world = (new_affine[:3, :3] @ idx + new_affine[:3, 3:]).reshape(3, 40, 30, 20)
    expected = world[0] * 1.0 + world[1] * 2.0 - world[2] * 0.5
    np.testing.assert_allclose(up[2:-2, 2:-2, 2:-2], expected[2:-2, 2:-2, 2:-2], atol=1e-4)
    with pytest.raises(ValueError, match="order must be 0"):
        resample(label, (4, 4, 4), order=3)


# ---- intensities ----

def test_normalise_uses_brain_voxels_in_float64_and_keeps_background_zero():
    image, _ = synthetic()
    out, stats = normalise(image)
    brain = np.any(image != 0, axis=0)
    assert out.dtype == np.float32
    assert not out[:, ~brain].any()
    for c in range(4):
        values = image[c][brain].astype(np.float64)
        assert stats[c]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert stats[c]["std"] == pytest.approx(values.std(), rel=1e-12)
        assert out[c][brain].mean() == pytest.approx(0, abs=1e-5)
        assert out[c][brain].std() == pytest.approx(1, abs=1e-5)


def test_normalise_rejects_constant_channels_and_bounds():
    image, _ = synthetic()
    image[2][image[2] != 0] = 7.0
    with pytest.raises(ValueError, match="channel t1ce is constant"):
        normalise(image)
    z = np.zeros((4, 3, 3, 3), dtype=np.float32)
    z[1, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="channel t1: 1 non-finite"):
        check_normalised(z, 100)
    z[1, 0, 0, 0] = -5000
    with pytest.raises(ValueError, match=r"channel t1: \|z\| reaches 5000 after normalisation; expected <= 100"):
        check_normalised(z, 100)


# ---- one case ----

def test_preprocess_case_outputs_and_meta():
    image, label, case = in_memory(PERMUTED)
    array, lab, meta = run(image, label, case, PreprocessConfig(crop_margin=1))
    assert array.dtype == np.float32 and lab.dtype == np.uint8
    assert array.shape[1:] == lab.shape == tuple(meta["shape"]) == tuple(meta["crop"]["shape"])
    assert nib.aff2axcodes(np.array(meta["affine"])) == ("R", "A", "S")
    assert meta["original"]["orientation"] == "".join(nib.aff2axcodes(PERMUTED))
    assert meta["original"]["spacing"] == pytest.approx([1.2, 0.9, 1.5])
    assert meta["spacing"] == pytest.approx([0.9, 1.5, 1.2])  # R = array j, A = k, S = i
    assert meta["volumes_ml"] == pytest.approx(region_volumes_ml(label.array, BRATS, (1.2, 0.9, 1.5)))
    assert (meta["case"], meta["site"], meta["scheme"]) == ("Brats18_TEST_001_1", "TEST", "brats")
    assert meta["resample"] is None and meta["config"]["crop_margin"] == 1
    json.dumps(meta)  # plain JSON all the way down


def test_preprocess_case_rejects_wrong_channel_count():
    image, label, case = in_memory()
    with pytest.raises(ValueError, match=r"expected \(4, X, Y, Z\)"):
        run(Image(image.array[:3], LPS), label, case)


@pytest.mark.parametrize("value, dtype, message", [
    (256, np.int16, "whole numbers 0..255"), (-1, np.int16, "whole numbers 0..255"),
    (1.5, np.float32, "whole numbers 0..255"), (3, np.uint8, r"label values \[3\] are not in the brats"),
])
def test_preprocess_case_rejects_labels_that_uint8_or_the_scheme_cannot_hold(value, dtype, message):
    image, label, case = in_memory()
    bad = label.array.astype(dtype)
    bad[12, 14, 10] = value
    with pytest.raises(ValueError, match=message):
        run(image, Image(bad, LPS), case)


def test_to_original_rejects_a_volume_of_another_shape():
    image, label, case = in_memory()
    _, _, meta = run(image, label, case)
    with pytest.raises(ValueError, match="cache space is"):
        to_original(np.zeros((5, 5, 5)), meta)


# ---- round trip through files ----

@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted"])
def test_label_round_trip_is_bit_for_bit(tmp_path, affine):
    dataset = discover(write_case(tmp_path / "data", affine))
    case = dataset.cases[0]
    image, label = load_case(case, dataset)
    array, lab, meta = preprocess_case(image, label, case, PreprocessConfig(crop_margin=2), scheme=BRATS)
    original = np.asanyarray(nib.load(case.label).dataobj)
    back = to_original(lab, meta)
    assert back.shape == original.shape and np.array_equal(back, original)
    brain = to_original(array, meta, order=0) != 0
    np.testing.assert_array_equal(brain, image.array != 0)
    assert meta["inputs"]["label"]["path"] == str(case.label) and len(meta["inputs"]["label"]["sha256"]) == 64


def test_round_trip_with_resampling_restores_geometry(tmp_path):
    dataset = discover(write_case(tmp_path / "data", PERMUTED))
    case = dataset.cases[0]
    image, label = load_case(case, dataset)
    config = PreprocessConfig(target_spacing=(1.0, 1.0, 1.0))
    array, lab, meta = preprocess_case(image, label, case, config, scheme=BRATS)
    assert meta["spacing"] == pytest.approx([1.0, 1.0, 1.0], abs=0.07)
    assert meta["resample"]["from_shape"] != meta["resample"]["to_shape"]
    back = to_original(lab, meta)
    assert back.shape == label.array.shape and back.dtype == np.uint8
    assert np.array_equal(np.array(meta["original"]["affine"]), image.affine)
    for got, ref in zip(labels_to_regions(back, BRATS), labels_to_regions(label.array, BRATS)):
        assert 2 * (got & ref).sum() / (got.sum() + ref.sum()) > 0.85
    assert to_original(array, meta, order=1).shape == image.array.shape


@pytest.mark.realdata
@pytest.mark.parametrize("case_id", ["Brats18_2013_20_1", "Brats18_TCIA10_637_1"])
def test_real_lps_label_round_trip_is_bit_for_bit(shared_data, case_id):
    dataset = discover(shared_data / "brats18")
    case = next(c for c in dataset.cases if c.case_id == case_id)
    image, label = load_case(case, dataset)
    array, lab, meta = preprocess_case(image, label, case, PreprocessConfig(), scheme=dataset.scheme)
    assert meta["original"]["orientation"] == "LPS"
    assert nib.aff2axcodes(np.array(meta["affine"])) == ("R", "A", "S")
    assert float(np.abs(array).max()) < 50
    original = np.asanyarray(nib.load(case.label).dataobj)
    back = to_original(lab, meta)
    assert back.shape == original.shape
    assert back.astype(original.dtype).tobytes() == original.tobytes()


def test_resampling_beyond_the_image_budget_is_refused_before_allocating(make_dataset, nifti, case_arrays,
                                                                        affine_lps, tmp_path, caplog):
    """#23: ~100 mm voxels resampled to 1 mm made torch try to allocate 915 GB."""
    from glioseg.cli import main

    root = make_dataset("brats", cases=1)
    case = next(p for p in root.iterdir() if p.is_dir())
    channels, label = case_arrays()
    huge = affine_lps(label.shape, spacing=(100.0, 100.0, 100.0))
    for name, array in channels.items():
        nifti(case / f"{case.name}_{name}.nii.gz", array, huge)
    nifti(case / f"{case.name}_seg.nii.gz", label, huge)
    out = tmp_path / "cache"
    assert main(["preprocess", str(root), "--out", str(out), "--spacing", "1", "1", "1", "--workers", "1"]) == 2
    assert "resampling from 100x100x100 mm to 1x1x1 mm turns" in caplog.text
    assert "over the image budget of 1,024 MiB" in caplog.text and "Traceback" not in caplog.text
    assert not (out / "cache.json").exists()
