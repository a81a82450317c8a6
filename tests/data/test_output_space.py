"""The output space: channels, activation, regions, label maps, region probabilities, entropy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glioseg.data.labels import get_scheme, labels_to_regions, regions_to_labels
from glioseg.data.output_space import OutputSpace

BRATS = get_scheme("brats")
CLASSES = OutputSpace("classes", BRATS)
REGIONS_OUT = OutputSpace("regions", BRATS)


def test_channels_follow_the_target_and_the_scheme():
    assert REGIONS_OUT.channels == 3 and CLASSES.channels == 4
    assert OutputSpace("classes", get_scheme("brats2023")).channels == 5
    assert OutputSpace("regions", "msd").scheme is get_scheme("msd")
    with pytest.raises(ValueError, match="output target 'labels' is unknown"):
        OutputSpace("labels", BRATS)


def test_activation_is_sigmoid_for_regions_and_softmax_for_classes():
    logits = torch.tensor([[[0.0]], [[2.0]], [[-2.0]], [[1.0]]]).reshape(1, 4, 1, 1, 1)
    torch.testing.assert_close(REGIONS_OUT.activation(logits[:, :3]), torch.sigmoid(logits[:, :3]))
    probs = CLASSES.activation(logits)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 1, 1, 1))
    assert probs.argmax(dim=1).item() == 1


def test_encode_gives_the_losses_targets():
    label = np.array([[[0, 1], [2, 4]]], dtype=np.uint8)
    regions = REGIONS_OUT.encode(label)
    assert regions.dtype == np.float32 and regions.shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(regions, labels_to_regions(label, BRATS))
    classes = CLASSES.encode(label)
    assert classes.dtype == np.int64 and classes.tolist() == [[[0, 1], [2, 3]]]


def test_label_map_nests_regions_as_predict_writes_them():
    probs = np.zeros((3, 1, 1, 2), dtype=np.float32)
    probs[2, 0, 0, 0] = 0.9                      # ET without WT or TC: still enhancing tumour
    probs[0, 0, 0, 1] = 0.9                      # WT only: edema
    label = REGIONS_OUT.label_map(probs)
    assert label.tolist() == [[[4, 2]]]
    np.testing.assert_array_equal(label, regions_to_labels(probs > 0.5, BRATS))
    assert REGIONS_OUT.label_map(probs, get_scheme("msd")).tolist() == [[[3, 1]]]


def test_ensembles_average_only_the_same_outputs():
    assert CLASSES.same_outputs(OutputSpace("classes", "brats"))
    assert not CLASSES.same_outputs(OutputSpace("classes", "brats2013"))   # 0, 1, 2, 3, 4 vs 0, 1, 2, 4
    assert REGIONS_OUT.same_outputs(OutputSpace("regions", "msd"))
    assert not REGIONS_OUT.same_outputs(CLASSES)


def test_class_models_regions_and_probabilities():
    # BraTS classes 0, 1 (core), 2 (edema), 4 (ET) → indices 0..3.
    probs = np.zeros((4, 2, 2, 1), dtype=np.float32)
    probs[:, 0, 0, 0] = [0.1, 0.2, 0.6, 0.1]   # edema
    probs[:, 0, 1, 0] = [0.1, 0.5, 0.1, 0.3]   # core
    probs[:, 1, 0, 0] = [0.1, 0.1, 0.1, 0.7]   # enhancing
    probs[:, 1, 1, 0] = [0.7, 0.1, 0.1, 0.1]   # background
    regions = CLASSES.to_regions(probs)
    assert regions[:, 0, 0, 0].tolist() == [True, False, False]
    assert regions[:, 0, 1, 0].tolist() == [True, True, False]
    assert regions[:, 1, 0, 0].tolist() == [True, True, True]
    assert not regions[:, 1, 1, 0].any()
    region_probs = CLASSES.region_probabilities(probs)
    np.testing.assert_allclose(region_probs[:, 0, 1, 0], [0.9, 0.8, 0.3], atol=1e-6)
    entropy = CLASSES.entropy(probs)
    assert entropy.shape == (2, 2, 1) and 0 <= entropy.min() and entropy.max() <= 1


def test_region_uncertainty_is_zero_when_certain_and_one_at_half():
    probs = np.stack([np.full((2, 2, 2), v, dtype=np.float32) for v in (0.0, 1.0, 0.5)])
    entropy = REGIONS_OUT.entropy(probs)
    np.testing.assert_allclose(entropy, 1 / 3, atol=1e-4)
