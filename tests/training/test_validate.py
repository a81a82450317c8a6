"""Validation scores a case through predict's window engine: box or patch windows, ids, train mode kept."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glioseg.data.labels import get_scheme, labels_to_regions
from glioseg.data.output_space import OutputSpace
from glioseg.inference.predictor import PredictConfig
from glioseg.training.recipe import build_config
from glioseg.training.validate import validate

BRATS = get_scheme("brats")
REGIONS_OUT = OutputSpace("regions", BRATS)


def _case(shape=(24, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    """A (4, X, Y, Z) image whose first three channels are +4 inside WT / TC / ET and -4 outside."""
    label = np.zeros(shape, dtype=np.uint8)
    label[4:16, 3:15, 2:14] = 2
    label[6:12, 5:11, 4:10] = 1
    label[8:10, 7:9, 6:8] = 4
    regions = labels_to_regions(label, BRATS)
    image = np.concatenate([np.where(regions, 4.0, -4.0), np.zeros((1, *shape))]).astype(np.float32)
    return image, label


class Pointwise(torch.nn.Module):
    """Logits = the first three channels times ``scale``: the regions exactly when scale > 0."""

    size_divisor = 1

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return self.scale * x[:, :3]


class SiteGated(Pointwise):
    """Right only for site 3: any other id, or none, predicts nothing."""

    takes_ids = True   # declared, as every network of the registry declares it

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, ids=None):
        self.seen.append(None if ids is None else ids.tolist())
        right = ids is not None and bool((ids == 3).all())
        return x[:, :3] if right else torch.full_like(x[:, :3], -5.0)


@pytest.mark.parametrize("window,overlap", [("box", 0.5), ("patch", 0.5), ("patch", 0.25)])
def test_a_model_that_reproduces_the_regions_scores_one(window, overlap):
    image, label = _case()
    model = Pointwise().train()
    scores = validate(model, [("c1", image, label, None)], REGIONS_OUT, (8, 8, 8),
                      PredictConfig(window=window, overlap=overlap))
    assert scores == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert model.training   # validation puts the model back in the mode it found it in


def test_scores_are_the_mean_over_cases_with_the_brats_empty_mask_convention():
    image, label = _case()
    silent = Pointwise(scale=-1.0)   # on an image of +4 everywhere: logits -4, nothing predicted
    bright = np.full_like(image, 4.0)
    scores = validate(silent, [("c1", bright, label, None), ("c2", bright, np.zeros_like(label), None)],
                      REGIONS_OUT, (8, 8, 8), PredictConfig())
    # c1 misses its tumour (Dice 0); c2 has none and predicts none (Dice 1)
    assert scores == {"WT": 0.5, "TC": 0.5, "ET": 0.5}


def test_regions_are_nested_as_in_the_label_map_predict_writes():
    """Core predicted outside the whole tumour is tumour core in predict's label map, so inside WT."""
    image, label = _case()
    stray = np.zeros(label.shape, dtype=bool)
    stray[18:22, 15:19, 14:17] = True            # outside the tumour: 48 voxels
    image[1][stray] = 4.0                        # the TC channel fires there, the WT channel does not
    scores = validate(Pointwise(), [("c1", image, label, None)], REGIONS_OUT, (8, 8, 8), PredictConfig())
    wt, tc = (int(r.sum()) for r in labels_to_regions(label, BRATS)[:2])
    assert scores["WT"] == pytest.approx(2 * wt / (2 * wt + 48))
    assert scores["TC"] == pytest.approx(2 * tc / (2 * tc + 48)) and scores["ET"] == 1.0


def test_a_diverged_model_is_scored_as_predicting_nothing(caplog):
    """Non-finite outputs (weights blown up by a bad step) do not stop the run in validation: the
    precision controller decides that; the case counts as an empty prediction."""
    image, label = _case()
    broken = Pointwise(scale=float("nan"))
    with caplog.at_level("WARNING"):
        scores = validate(broken, [("c1", image, label, None), ("c2", image, np.zeros_like(label), None)],
                          REGIONS_OUT, (8, 8, 8), PredictConfig())
    assert scores == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    assert "non-finite network outputs" in caplog.text


def test_site_ids_reach_models_that_take_them():
    image, label = _case()
    model = SiteGated()
    good = validate(model, [("c1", image, label, 3)], REGIONS_OUT, (8, 8, 8), PredictConfig())
    bad = validate(model, [("c1", image, label, None)], REGIONS_OUT, (8, 8, 8), PredictConfig())
    assert good["WT"] == 1.0 and bad["WT"] == 0.0
    assert model.seen == [[3], None]


def test_class_models_are_scored_through_the_argmax():
    image, label = _case()
    values = (0, 1, 2, 4)   # the BraTS classes in channel order
    onehot = np.stack([(label == v) for v in values]).astype(np.float32) * 8.0

    class Classes(torch.nn.Module):
        def forward(self, x):
            return x

    scores = validate(Classes(), [("c1", onehot, label, None)], OutputSpace("classes", BRATS), (8, 8, 8), PredictConfig())
    assert scores == {"WT": 1.0, "TC": 1.0, "ET": 1.0}


@pytest.mark.parametrize("bad,message", [({"val_window": "whole"}, "val_window must be one of box, patch, got"),
                                         ({"val_window": "volume"}, "val_window must be one of box, patch, got"),
                                         ({"val_overlap": 1.0}, r"val_overlap must be in \[0, 1\)")])
def test_train_config_rejects_bad_validation_windows(bad, message):
    assert build_config("segresnet-brats").val_window == "box"
    with pytest.raises(ValueError, match=message):
        build_config("segresnet-brats", None, bad)
