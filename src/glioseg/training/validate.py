"""Validation on whole cached volumes: sliding window over the cropped brain, Dice per region."""
from __future__ import annotations

import logging

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from glioseg.data.labels import REGIONS, LabelScheme, classes_to_regions, labels_to_regions
from glioseg.evaluation.metrics import dice

log = logging.getLogger(__name__)


def logits_to_regions(logits: torch.Tensor, target: str, scheme: LabelScheme) -> np.ndarray:
    """Logits (K, X, Y, Z) → boolean regions (3, X, Y, Z) WT, TC, ET."""
    if target == "regions":
        return (logits > 0).cpu().numpy()
    return classes_to_regions(logits.argmax(0).cpu().numpy(), scheme)


@torch.no_grad()
def window_logits(model: torch.nn.Module, image: np.ndarray, roi: tuple[int, ...], overlap: float,
                  device: torch.device, site_id: int | None = None) -> torch.Tensor:
    """Gaussian-weighted sliding-window logits (K, X, Y, Z) in fp32 for one (C, X, Y, Z) volume."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)
    kwargs = {}
    if site_id is not None:
        kwargs["ids"] = torch.tensor([site_id], device=device)
    out = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, mode="gaussian",
                                   predictor=lambda w: model(w, **kwargs).float(), overlap=overlap)
    return out[0]


def validate(model: torch.nn.Module, volumes, scheme: LabelScheme, target: str,
             roi: tuple[int, ...], overlap: float, device: torch.device) -> dict[str, float]:
    """Mean Dice per region over ``volumes`` (case_id, image, label, site_id or None)."""
    was_training = model.training
    model.eval()
    scores = {r: [] for r in REGIONS}
    try:
        for case_id, image, label, site_id in volumes:
            logits = window_logits(model, image, roi, overlap, device, site_id)
            pred = logits_to_regions(logits, target, scheme)
            ref = labels_to_regions(np.asarray(label), scheme)
            for r, p, q in zip(REGIONS, pred, ref):
                scores[r].append(dice(p, q))
            log.debug("validation %s: %s", case_id, {r: round(s[-1], 4) for r, s in scores.items()})
    finally:
        model.train(was_training)
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}
