"""Cases at another spacing than the model's are resampled to it and back; never silently (#23)."""
from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from glioseg.inference import inputs, released
from glioseg.inference.bundle import ModelBundle, load_bundle
from glioseg.inference.pipeline import OutputOptions, predict_all
from glioseg.inference.predictor import PredictConfig, Predictor
from glioseg.inference.spacing import plan, ras_spacing
from ._fakes import FakeNetwork, make_bundle, threshold_logits, write_case

# LPS with 1 x 1 x 5 mm voxels: every fifth slice of a 1 mm scan
THICK = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 35], [0, 0, 5.0, -5], [0, 0, 0, 1]])
ONE_MM = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 35], [0, 0, 1.0, -5], [0, 0, 0, 1]])


def _predict(tmp_path, affine, bundle, name="out"):
    folder, label = write_case(tmp_path / f"in-{name}", affine)
    net = FakeNetwork(threshold_logits, bundle)
    predictor = Predictor([net], PredictConfig(precision="fp32"))
    items = inputs.collect([folder], {}, None, predictor.bundle.channels, None, "brats")
    predict_all(items, predictor, tmp_path / name, OutputOptions())
    written = np.asarray(nib.load(next((tmp_path / name).glob("*.nii.gz"))).dataobj)
    sidecar = json.loads(next((tmp_path / name).glob("*.json")).read_text())
    return net, written, label, sidecar


def test_ras_spacing_follows_the_axes_the_network_sees():
    permuted = np.array([[0, -0.9, 0, 30], [0, 0, 1.5, -20], [1.2, 0, 0, -10], [0, 0, 0, 1]])
    assert ras_spacing(permuted, (10, 10, 10)) == (0.9, 1.5, 1.2)   # R is array axis 1, A axis 2, S axis 0
    assert ras_spacing(THICK, (4, 4, 4)) == (1.0, 1.0, 5.0)


def test_a_5mm_case_is_resampled_to_the_models_1mm_and_mapped_back(tmp_path):
    net, written, label, sidecar = _predict(tmp_path, THICK, make_bundle(trained_spacing=(1.0, 1.0, 1.0)))
    window, box = net.calls[0][0][2:], sidecar["cache_box"]
    assert list(window) == [box[0][1] - box[0][0], box[1][1] - box[1][0], 5 * (box[2][1] - box[2][0])]
    assert written.shape == label.shape                # the network saw 1 mm slices; labels on the input's grid
    np.testing.assert_array_equal(written, label)      # a pointwise model: back onto the same voxels
    assert sidecar["spacing"]["input_mm"] == [1.0, 1.0, 5.0] and sidecar["spacing"]["resampled"] is True
    assert "resampled to the model's 1x1x1 mm and back" in sidecar["spacing"]["note"]


def test_a_case_at_the_models_spacing_is_not_resampled(tmp_path):
    net, written, label, sidecar = _predict(tmp_path, ONE_MM, make_bundle(trained_spacing=(1.0, 1.0, 1.0)))
    assert sidecar["spacing"] == {"input_mm": [1.0, 1.0, 1.0], "model_mm": [1.0, 1.0, 1.0], "resampled": False,
                                  "note": "spacing 1x1x1 mm matches the model's 1x1x1 mm"}
    np.testing.assert_array_equal(written, label)
    assert not plan(make_bundle(trained_spacing=(1.0, 1.0, 1.0)), np.diag([1.004, 1, 1, 1]), (8, 8, 8)).resampled


def test_a_model_without_a_recorded_spacing_is_said_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, written, label, sidecar = _predict(tmp_path, THICK, make_bundle())
    assert caplog.text.count("the model records no training spacing") == 1
    assert sidecar["spacing"]["model_mm"] is None and sidecar["spacing"]["resampled"] is False


def test_bundles_record_their_spacing_and_older_ones_still_load():
    bundle = make_bundle(trained_spacing=[1, 1, 2.5])
    state = bundle.metadata()
    assert state["trained_spacing"] == [1.0, 1.0, 2.5]
    assert ModelBundle.from_state(state).expected_spacing() == (1.0, 1.0, 2.5)
    del state["trained_spacing"]                                   # a checkpoint from before
    assert ModelBundle.from_state(state).trained_spacing is None
    with pytest.raises(ValueError, match="trained_spacing: expected 3 positive millimetres"):
        make_bundle(trained_spacing=[1, 0, 1])
    resampling = make_bundle(preprocess={"target_spacing": [2, 2, 2], "crop_margin": 0,
                                         "normalisation": "zscore-nonzero", "max_abs_z": 1000.0})
    assert resampling.expected_spacing() == (2.0, 2.0, 2.0)       # the preprocessing's target wins


def test_the_released_model_expects_1mm():
    """Trained on 1 mm BraTS 2018 and 2021 cases: every member's config records it."""
    for config in released.verified_configs("segresnet-brats"):
        assert load_bundle(config).expected_spacing() == (1.0, 1.0, 1.0)


def test_ensemble_members_of_different_spacings_are_refused():
    one, two = (FakeNetwork(threshold_logits, make_bundle(trained_spacing=s)) for s in ((1, 1, 1), (2, 2, 2)))
    with pytest.raises(ValueError, match="trained at different spacings"):
        Predictor([one, two], PredictConfig())
