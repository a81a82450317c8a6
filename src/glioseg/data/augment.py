"""Patch augmentation drawn from an explicit generator: plan first, then apply.

The default follows the MONAI SegResNet BraTS recipe (tutorial ``brats_segmentation_3d``):
``RandFlipd(prob=0.5)`` on each of the three axes, ``RandScaleIntensityd(factors=0.1, prob=1.0)``
(v ← v·(1+f), f ~ U(−0.1, 0.1)) and ``RandShiftIntensityd(offsets=0.1, prob=1.0)`` (v ← v+o,
o ~ U(−0.1, 0.1)), applied after z-scoring to every voxel of the patch, background included, as
the recipe does. The recipe draws one factor and one offset for all channels (MONAI's default
``channel_wise=False``); ``channel_wise=True`` draws one per channel. Small rotations and isotropic scaling are
options (off by default). A plan is drawn before the patch is read, because rotating or shrinking
needs a larger region of the volume (:func:`read_shape`) to fill the patch without empty corners.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from glioseg.config import from_dict
from glioseg.data.augment_intensity import (IntensityConfig, IntensityPlan, apply_intensity, check_probabilities,
                                            sample_intensity)
from glioseg.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings. Probabilities are per patch; angles in degrees, scale as ±fraction."""

    flip_prob: tuple[float, float, float] = (0.5, 0.5, 0.5)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 1.0
    channel_wise: bool = False
    rotate_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate_prob: float = 0.0
    zoom: float = 0.0
    zoom_prob: float = 0.0
    # nnU-Net's noise, blur, contrast, low resolution and gamma (off unless a probability is set)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    def __post_init__(self):
        check_probabilities("AugmentConfig", {"flip_prob": self.flip_prob, "intensity_prob": (self.intensity_prob,),
                                              "rotate_prob": (self.rotate_prob,), "zoom_prob": (self.zoom_prob,)})
        if len(self.flip_prob) != 3 or len(self.rotate_deg) != 3:
            raise InputError("AugmentConfig.flip_prob and rotate_deg need one value per axis (3)")
        if not 0.0 <= self.zoom < 0.5:
            raise InputError(f"AugmentConfig.zoom must lie in [0, 0.5); got {self.zoom}")
        if not all(0.0 <= a <= 45.0 for a in self.rotate_deg):
            raise InputError(f"AugmentConfig.rotate_deg must lie in [0, 45] degrees; got {self.rotate_deg}")
        if self.intensity_scale < 0 or self.intensity_shift < 0:
            raise InputError("AugmentConfig.intensity_scale and intensity_shift must be >= 0")
        self.intensity.validate("AugmentConfig.intensity")

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentConfig":
        return from_dict(cls, values, "augment")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all (validation, tests)."""
        return cls(flip_prob=(0.0, 0.0, 0.0), intensity_prob=0.0)


@dataclass(frozen=True)
class AugmentPlan:
    """One patch's random choices. ``matrix`` maps patch offsets (voxels, from the patch centre)
    to source offsets; ``None`` when no rotation or scaling was drawn."""

    flips: tuple[bool, bool, bool]
    matrix: np.ndarray | None
    scale: np.ndarray  # (C,) or (1,) multiplicative factors 1+f
    shift: np.ndarray  # (C,) or (1,) offsets
    intensity: IntensityPlan | None = None  # None when the config's intensity block is off


def _rotation(angles: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(angle)
        r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
        out = r @ out
    return out


def sample_plan(config: AugmentConfig, rng: np.random.Generator, channels: int) -> AugmentPlan:
    """Draw one patch's augmentation. Always consumes the same number of draws from ``rng`` for
    one config (the intensity block draws only when it is on, so that configs without it draw
    exactly what they drew before it existed)."""
    u = rng.random(6)
    flips = tuple(bool(u[a] < config.flip_prob[a]) for a in range(3))
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(config.rotate_deg))
    zoom = 1 + rng.uniform(-config.zoom, config.zoom)
    n = channels if config.channel_wise else 1
    factors = rng.uniform(-config.intensity_scale, config.intensity_scale, n)
    offsets = rng.uniform(-config.intensity_shift, config.intensity_shift, n)
    rotate, scale_space, intensity = u[3] < config.rotate_prob, u[4] < config.zoom_prob, u[5] < config.intensity_prob
    matrix = None
    if (rotate and np.any(angles)) or (scale_space and zoom != 1):
        # zoom > 1 magnifies: each patch voxel covers less of the source.
        matrix = (_rotation(angles) if rotate else np.eye(3)) / (zoom if scale_space else 1.0)
    if not intensity:
        factors, offsets = np.zeros(n), np.zeros(n)
    extra = sample_intensity(config.intensity, rng, channels) if config.intensity.active else None
    return AugmentPlan(flips, matrix, (1 + factors).astype(np.float32), offsets.astype(np.float32), extra)


def read_shape(plan: AugmentPlan, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Size of the source region a patch needs: the patch itself, or the bounding box of the
    rotated / scaled patch plus one voxel of interpolation margin on each side. The excess over
    the patch is even, so that the region and the patch share their centre exactly."""
    if plan.matrix is None:
        return tuple(patch)
    extent = np.abs(plan.matrix) @ np.asarray(patch, float)
    return tuple(p + 2 * max(0, math.ceil((e - p) / 2)) + 2 for p, e in zip(patch, extent))


def _resample(region: np.ndarray, matrix: np.ndarray, patch: tuple[int, int, int], order: int) -> np.ndarray:
    centre_in = (np.asarray(region.shape[-3:]) - 1) / 2
    centre_out = (np.asarray(patch) - 1) / 2
    offset = centre_in - matrix @ centre_out
    if region.ndim == 3:
        return ndimage.affine_transform(region, matrix, offset, output_shape=tuple(patch), order=order,
                                        mode="constant", cval=0)
    return np.stack([_resample(c, matrix, patch, order) for c in region])


def apply_plan(plan: AugmentPlan, image: np.ndarray, label: np.ndarray | None,
               patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment a region read with :func:`read_shape` (centred on the patch) → patch-sized arrays.

    ``image`` (C, *region) float32, ``label`` (*region) integer or None. Labels are resampled by
    nearest neighbour only. Returns new C-contiguous arrays; the inputs are not modified.
    """
    if plan.matrix is not None:
        image = _resample(image, plan.matrix, patch, order=1)
        label = None if label is None else _resample(label, plan.matrix, patch, order=0)
    axes = tuple(a for a, flip in enumerate(plan.flips) if flip)
    if axes:
        image = np.flip(image, tuple(a + 1 for a in axes))
        label = None if label is None else np.flip(label, axes)
    out = np.empty(image.shape, np.float32)
    np.multiply(image, plan.scale[:, None, None, None], out=out)
    out += plan.shift[:, None, None, None]
    if plan.intensity is not None:
        apply_intensity(plan.intensity, out)
    return out, (None if label is None else np.ascontiguousarray(label))
