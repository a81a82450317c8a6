"""Validation on whole cached volumes, scored as ``glioseg predict`` + ``glioseg evaluate`` would score them.

Each case goes through :func:`glioseg.inference.predictor.window_logits` with the run's
``val_window`` ("box": one window over the cropped brain, predict's default; "patch":
Gaussian-weighted training-patch windows with ``val_overlap``), then through the label map that
predict writes (regions nested as in ``data.labels.regions_to_labels``: a voxel predicted TC but
not WT counts as tumour core, so inside WT), so the best checkpoint is chosen by the numbers the
user will get. Dice per region, WT / TC / ET.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from glioseg.data.labels import REGIONS, labels_to_regions
from glioseg.data.output_space import OutputSpace
from glioseg.evaluation.metrics import dice
from glioseg.inference.predictor import ModuleNetwork, NonFiniteOutputError, PredictConfig, RunStats, window_logits

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_regions(network: ModuleNetwork, image: np.ndarray, config: PredictConfig, output: OutputSpace,
                    site_id: int | None = None) -> np.ndarray:
    """Boolean regions (3, X, Y, Z) WT, TC, ET of one cache-space (C, X, Y, Z) volume."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None]   # a copy: cached volumes are read-only memmaps
    try:
        logits = window_logits(network, x, config, site_id, RunStats())
    except NonFiniteOutputError:
        # a diverging run is the precision controller's to stop; validation scores it as predicting nothing
        log.warning("validation: non-finite network outputs; the case is scored as an empty prediction")
        return np.zeros((len(REGIONS), *image.shape[1:]), dtype=bool)
    label = output.label_map(output.activation(logits)[0].cpu().numpy())
    return labels_to_regions(label, output.scheme)


def validate(model: torch.nn.Module, volumes, output: OutputSpace, patch: tuple[int, ...],
             config: PredictConfig) -> dict[str, float]:
    """Mean Dice per region over ``volumes`` (case_id, image, label, site_id or None)."""
    network = ModuleNetwork(model, patch, type(model).__name__)
    was_training = model.training
    model.eval()
    scores = {r: [] for r in REGIONS}
    try:
        for case_id, image, label, site_id in volumes:
            pred = predict_regions(network, image, config, output, site_id)
            ref = labels_to_regions(np.asarray(label), output.scheme)
            for r, p, q in zip(REGIONS, pred, ref):
                scores[r].append(dice(p, q))
            log.debug("validation %s: %s", case_id, {r: round(s[-1], 4) for r, s in scores.items()})
    finally:
        model.train(was_training)
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}
