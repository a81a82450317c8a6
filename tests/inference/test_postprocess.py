"""Post-processing: small tumour components removed (the largest kept), a small ET relabelled core,
volumes in mm³ at any spacing, 26-connectivity as scipy counts it, and the label conventions kept."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from glioseg.data.labels import get_scheme, labels_to_regions
from glioseg.errors import InputError
from glioseg.inference.postprocess import (PostprocessConfig, postprocess_label, postprocess_regions,
                                           tumour_components)

BRATS = get_scheme("brats")


def _label() -> np.ndarray:
    """A 40³ BraTS label map: a large tumour (edema 12³ around a core 6³ with an ET 4³) and a small
    separate blob of edema 3³ with one ET voxel."""
    label = np.zeros((40, 40, 40), np.uint8)
    label[4:16, 4:16, 4:16] = BRATS.edema
    label[7:13, 7:13, 7:13] = BRATS.core
    label[8:12, 8:12, 8:12] = BRATS.enhancing
    label[30:33, 30:33, 30:33] = BRATS.edema
    label[31, 31, 31] = BRATS.enhancing
    return label


def test_a_small_component_goes_with_its_core_and_the_large_one_stays():
    label = _label()
    out = postprocess_label(label, BRATS, (1, 1, 1), PostprocessConfig(min_tumour_mm3=100))
    assert not out[28:36, 28:36, 28:36].any()          # 27 voxels < 100 mm³: removed, ET included
    assert np.array_equal(out[:20, :20, :20], label[:20, :20, :20])


def test_thresholds_are_volumes_so_spacing_counts():
    # at 2 mm the blob is 27 x 8 = 216 mm³: kept at 100 mm³, removed at 300 mm³
    label = _label()
    kept = postprocess_label(label, BRATS, (2, 2, 2), PostprocessConfig(min_tumour_mm3=100))
    assert np.array_equal(kept, label)
    gone = postprocess_label(label, BRATS, (2, 2, 2), PostprocessConfig(min_tumour_mm3=300))
    assert not gone[28:36, 28:36, 28:36].any()


def test_the_largest_component_is_never_removed():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:7, 5:7, 5:7] = BRATS.core                    # 8 voxels, the only tumour
    out = postprocess_label(label, BRATS, (1, 1, 1), PostprocessConfig(min_tumour_mm3=1000))
    assert np.array_equal(out, label)


def test_a_small_et_becomes_core_and_a_large_one_stays():
    label = np.zeros((30, 30, 30), np.uint8)
    label[5:20, 5:20, 5:20] = BRATS.edema
    label[8:14, 8:14, 8:14] = BRATS.core
    label[9:11, 9:11, 9:11] = BRATS.enhancing            # 8 mm³ of ET
    out = postprocess_label(label, BRATS, (1, 1, 1), PostprocessConfig(min_et_mm3=10))
    assert not (out == BRATS.enhancing).any()
    assert (out[9:11, 9:11, 9:11] == BRATS.core).all()
    assert np.array_equal(out != 0, label != 0)          # whole tumour unchanged
    same = postprocess_label(label, BRATS, (1, 1, 1), PostprocessConfig(min_et_mm3=8))
    assert np.array_equal(same, label)                    # 8 mm³ is not below 8


def test_components_are_26_connected_as_scipy_counts_them():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 30, 30)) > 0.85
    labelled, sizes = tumour_components(mask)
    reference, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert len(sizes) - 1 == n
    assert sorted(sizes[1:]) == sorted(np.bincount(reference.ravel())[1:])


@pytest.mark.parametrize("scheme", ["brats", "msd", "brats2023"])
def test_label_conventions_are_kept(scheme):
    s = get_scheme(scheme)
    label = np.zeros((40, 40, 40), np.uint8)
    label[4:16, 4:16, 4:16] = s.edema
    label[7:13, 7:13, 7:13] = s.core
    label[8:12, 8:12, 8:12] = s.enhancing
    label[30:33, 30:33, 30:33] = s.edema
    out = postprocess_label(label, s, (1, 1, 1), PostprocessConfig(min_tumour_mm3=100))
    assert out.dtype == label.dtype
    assert set(np.unique(out)) == {0, s.edema, s.core, s.enhancing}
    assert np.array_equal(labels_to_regions(out, s)[:, :20, :20, :20], labels_to_regions(label, s)[:, :20, :20, :20])


def test_off_changes_nothing_and_regions_come_back_nested():
    label = _label()
    assert postprocess_label(label, BRATS, (1, 1, 1), PostprocessConfig()) is label
    regions = np.zeros((3, 10, 10, 10), bool)
    regions[2, 2:4, 2:4, 2:4] = True                      # ET predicted outside WT and TC
    out = postprocess_regions(regions, (1, 1, 1), PostprocessConfig(min_tumour_mm3=1))
    assert out[0, 2:4, 2:4, 2:4].all() and out[1, 2:4, 2:4, 2:4].all()


@pytest.mark.parametrize("values", [{"min_tumour_mm3": -1}, {"min_et_mm3": float("nan")}, {"min_et_mm3": "x"},
                                    {"min_volume": 3}])
def test_bad_settings_are_refused(values):
    with pytest.raises(InputError, match="postprocess"):
        PostprocessConfig.from_dict(values)


def test_predict_applies_the_models_postprocessing_unless_asked_not_to(tmp_path):
    # the fake network reproduces the reference exactly; a model carrying "ET below 10^6 mm³ is
    # core" writes the reference with its ET relabelled core, and --postprocess none writes it as is
    from pathlib import Path

    import nibabel as nib

    from glioseg.inference import inputs
    from glioseg.inference.pipeline import predict_all
    from glioseg.inference.predictor import PredictConfig, Predictor

    from ._fakes import LPS, FakeNetwork, make_bundle, threshold_logits, write_case

    folder, label = write_case(tmp_path / "data", LPS)
    bundle = make_bundle(postprocess={"min_et_mm3": 1e6})
    for setting, expected in (("model", np.where(label == 4, 1, label)), ("none", label)):
        predictor = Predictor([FakeNetwork(threshold_logits, bundle)], PredictConfig(postprocess=setting))
        items = inputs.collect([folder], {}, None, predictor.bundle.channels, None, "brats")
        out = tmp_path / setting
        predict_all(items, predictor, out)
        written = np.asanyarray(nib.load(str(out / f"{folder.name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(written, expected)
        sidecar = next(Path(out).glob("*.json")).read_text()
        assert ('"min_et_mm3": 1000000.0' in sidecar) == (setting == "model")


def test_ensemble_members_must_carry_the_same_postprocessing():
    from glioseg.inference.predictor import PredictConfig, Predictor

    from ._fakes import FakeNetwork, make_bundle, threshold_logits

    a = FakeNetwork(threshold_logits, make_bundle(postprocess={"min_et_mm3": 100}))
    b = FakeNetwork(threshold_logits, make_bundle(postprocess={}))
    with pytest.raises(InputError, match="post-processing"):
        Predictor([a, b], PredictConfig())


def test_a_bundle_keeps_its_postprocessing_and_an_older_one_has_none():
    from glioseg.inference.bundle import ModelBundle

    from ._fakes import make_bundle

    bundle = make_bundle(postprocess={"min_tumour_mm3": 250.0})
    again = ModelBundle.from_state(bundle.metadata())
    assert again.postprocess_config == PostprocessConfig(min_tumour_mm3=250.0)
    older = {k: v for k, v in bundle.metadata().items() if k != "postprocess"}
    assert not ModelBundle.from_state(older).postprocess_config.active
    with pytest.raises(ValueError, match="postprocess"):
        make_bundle(postprocess={"min_tumour_mm3": -5})


def test_thresholds_are_checked_and_described():
    config = PostprocessConfig(thresholds=[0.8, 0.6, 0.5])
    assert config.thresholds == (0.8, 0.6, 0.5) and config.active and config.thresholded
    assert config.describe() == "regions above probabilities WT 0.8, TC 0.6, ET 0.5"
    assert not PostprocessConfig().active and PostprocessConfig.from_dict(config.to_dict()) == config
    for bad in ([0.5, 0.5], [0.0, 0.5, 0.5], [0.5, 1.0, 0.5], ["x", 0.5, 0.5]):
        with pytest.raises(InputError, match="postprocess.thresholds must be three probabilities"):
            PostprocessConfig(thresholds=bad)


def test_a_model_with_thresholds_writes_smaller_regions_and_none_writes_the_networks_labels(tmp_path):
    import nibabel as nib
    import torch

    from glioseg.inference import inputs
    from glioseg.inference.pipeline import predict_all
    from glioseg.inference.predictor import PredictConfig, Predictor

    from ._fakes import LPS, FakeNetwork, make_bundle, write_case

    def soft(x):   # probabilities spread over (0, 1), unlike threshold_logits' near-certain ones
        return 0.5 * x[:, [0, 2, 3]]

    folder, _ = write_case(tmp_path / "data", LPS)
    volumes = {}
    for name, post, setting in (("plain", {}, "model"), ("high", {"thresholds": [0.9, 0.9, 0.9]}, "model"),
                                ("off", {"thresholds": [0.9, 0.9, 0.9]}, "none")):
        predictor = Predictor([FakeNetwork(soft, make_bundle(postprocess=post))], PredictConfig(postprocess=setting))
        items = inputs.collect([folder], {}, None, predictor.bundle.channels, None, "brats")
        predict_all(items, predictor, tmp_path / name)
        label = np.asanyarray(nib.load(str(tmp_path / name / f"{folder.name}.nii.gz")).dataobj)
        volumes[name] = int((label > 0).sum())
    assert volumes["off"] == volumes["plain"] > volumes["high"] > 0
    with pytest.raises(ValueError, match="thresholds .* need a region"):
        make_bundle(target="classes", out_channels=4, postprocess={"thresholds": [0.6, 0.5, 0.5]})
