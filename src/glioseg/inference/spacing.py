"""The voxel spacing a case is segmented at: the model's own, as nnU-Net does, never silently another.

A network learns structures at the voxel size it was trained on; a 1x1x5 mm or a 0.5 mm scan fed
as it is gets a tumour of another size in voxels (measured on one real case: WT Dice 0.928 at
1 mm, 0.875 after keeping every fifth slice). A bundle records the spacing it expects
(:meth:`glioseg.inference.bundle.ModelBundle.expected_spacing`: its preprocessing's target, else
the median spacing of its training cases). A case whose spacing (RAS axes, as the network sees
it) differs from that by more than :data:`TOLERANCE` on any axis is resampled to it by the
preprocessing (images trilinear) and its outputs are mapped back by the preprocessing's exact
inverse (:func:`glioseg.data.preprocess.to_original`: labels nearest, onto the original grid).
Within the tolerance nothing is resampled (header rounding is not a reason to interpolate).
A model that records no spacing (trained before glioseg recorded it) is run at the case's own
spacing, with a warning that says so and gives the numbers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from glioseg.data.preprocess import PreprocessConfig, orientation_to_ras, reoriented_affine, spacing_of

log = logging.getLogger(__name__)

TOLERANCE = 0.01   # relative, per axis: 1 % is far above header float noise and below any real difference


def ras_spacing(affine: np.ndarray, shape) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the RAS axes of an image with ``affine``, as preprocessing orders them."""
    ras = reoriented_affine(np.asarray(affine, dtype=np.float64), orientation_to_ras(affine), tuple(shape))
    return tuple(round(s, 6) for s in spacing_of(ras))


def _mm(spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing) + " mm"


@dataclass(frozen=True)
class SpacingPlan:
    """The case's spacing, the model's, and whether the case is resampled to the model's."""

    input_mm: tuple[float, float, float]
    model_mm: tuple[float, float, float] | None
    resampled: bool

    def to_dict(self) -> dict:
        return {"input_mm": list(self.input_mm), "model_mm": list(self.model_mm) if self.model_mm else None,
                "resampled": self.resampled}

    def describe(self) -> str:
        if self.model_mm is None:
            return f"spacing {_mm(self.input_mm)} used as it is (the model records no training spacing)"
        if not self.resampled:
            return f"spacing {_mm(self.input_mm)} matches the model's {_mm(self.model_mm)}"
        return f"spacing {_mm(self.input_mm)} resampled to the model's {_mm(self.model_mm)} and back"


def differs(spacing, model) -> bool:
    return any(abs(s - m) > TOLERANCE * m for s, m in zip(spacing, model))


def plan(bundle, affine: np.ndarray, shape) -> SpacingPlan:
    """What :func:`preprocess_config` will do with a case of ``affine`` and spatial ``shape``."""
    spacing, model = ras_spacing(affine, shape), bundle.expected_spacing()
    return SpacingPlan(spacing, model, model is not None and differs(spacing, model))


def preprocess_config(bundle, spacing: SpacingPlan) -> PreprocessConfig:
    """The bundle's preprocessing, resampling to the model's spacing where the plan says so."""
    config = bundle.preprocess_config()
    if spacing.resampled and config.target_spacing is None:
        config = replace(config, target_spacing=spacing.model_mm)
    return config


def unknown_spacing_warning(bundle, source) -> str | None:
    """One line for a model that records no spacing (said once per run, not per case)."""
    if bundle.expected_spacing() is not None:
        return None
    return (f"{source}: the model records no training spacing (trained before glioseg recorded it); cases are "
            "segmented at their own spacing, which is right only if it is the spacing the model was trained "
            "at (each case's sidecar gives its spacing)")
