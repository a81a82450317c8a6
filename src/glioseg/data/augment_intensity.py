"""nnU-Net's intensity augmentations for a patch: Gaussian noise, Gaussian blur, contrast,
low-resolution simulation and gamma, each drawn per patch, the channel-wise ones per channel.

The forms and defaults follow nnU-Net's ``default_data_augmentation`` (batchgenerators):
``GaussianNoiseTransform(noise_variance=(0, 0.1), p=0.1)``, ``GaussianBlurTransform((0.5, 1.0),
p_per_sample=0.2, p_per_channel=0.5)``, ``ContrastAugmentationTransform((0.75, 1.25), p=0.15)``
(about the channel mean, clipped to the channel's range), ``SimulateLowResolutionTransform((0.5,
1.0), p_per_sample=0.25, p_per_channel=0.5)`` and ``GammaTransform((0.7, 1.5), retain_stats=True,
p=0.3)``. Two simplifications, both for speed on a CPU data worker: the low-resolution copy is
brought back by linear instead of cubic interpolation, and the inverted-gamma variant is left out.
All are off unless their probability is set (:class:`IntensityConfig`), and then a plan draws a
fixed number of values, so that one seed gives one sequence of patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from glioseg.errors import InputError

CHANNEL_PROB = 0.5  # nnU-Net's p_per_channel for blur and low resolution


def check_probabilities(owner: str, probs: dict) -> None:
    """Each value (a probability, or a tuple of them) in [0, 1]; else an error naming ``owner.name``."""
    for name, value in probs.items():
        if not all(0.0 <= float(p) <= 1.0 for p in (value if isinstance(value, (tuple, list)) else (value,))):
            raise InputError(f"{owner}.{name} must lie in [0, 1]; got {value}")


@dataclass(frozen=True)
class IntensityConfig:
    """Probabilities per patch and the ranges drawn from (nnU-Net's values)."""

    noise_prob: float = 0.0
    noise_variance: float = 0.1
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    contrast_prob: float = 0.0
    contrast_range: tuple[float, float] = (0.75, 1.25)
    lowres_prob: float = 0.0
    lowres_range: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def validate(self, owner: str = "AugmentConfig") -> None:
        check_probabilities(owner, {name: getattr(self, name) for name in
                                    ("noise_prob", "blur_prob", "contrast_prob", "lowres_prob", "gamma_prob")})
        if self.noise_variance < 0:
            raise InputError(f"{owner}.noise_variance must be >= 0; got {self.noise_variance}")
        bounds = {"blur_sigma": (0.0, 10.0), "contrast_range": (0.0, 10.0), "lowres_range": (0.1, 1.0),
                  "gamma_range": (0.1, 10.0)}
        for name, (low, high) in bounds.items():
            pair = tuple(getattr(self, name))
            if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
                raise InputError(f"{owner}.{name} must be two values low <= high within [{low}, {high}]; got {pair}")

    @property
    def active(self) -> bool:
        return any(p > 0 for p in (self.noise_prob, self.blur_prob, self.contrast_prob, self.lowres_prob,
                                   self.gamma_prob))


@dataclass(frozen=True)
class IntensityPlan:
    """One patch's intensity choices; per channel, a neutral value means "not applied"
    (sigma 0, contrast 1, low-resolution zoom 1, gamma 1)."""

    noise_std: float
    noise_seed: int
    blur_sigma: np.ndarray
    contrast: np.ndarray
    lowres: np.ndarray
    gamma: np.ndarray


def sample_intensity(config: IntensityConfig, rng: np.random.Generator, channels: int) -> IntensityPlan:
    """Draw one patch's choices; always the same number of draws from ``rng`` for one config."""
    u = rng.random(5)
    per_channel = rng.random((2, channels)) < CHANNEL_PROB
    variance = rng.uniform(0.0, config.noise_variance)
    seed = int(rng.integers(2**31))
    sigma = rng.uniform(*config.blur_sigma, channels)
    contrast = rng.uniform(*config.contrast_range, channels)
    lowres = rng.uniform(*config.lowres_range, channels)
    gamma = rng.uniform(*config.gamma_range, channels)
    return IntensityPlan(
        noise_std=float(np.sqrt(variance)) if u[0] < config.noise_prob else 0.0, noise_seed=seed,
        blur_sigma=np.where(per_channel[0] & (u[1] < config.blur_prob), sigma, 0.0),
        contrast=np.where(u[2] < config.contrast_prob, contrast, 1.0),
        lowres=np.where(per_channel[1] & (u[3] < config.lowres_prob), lowres, 1.0),
        gamma=np.where(u[4] < config.gamma_prob, gamma, 1.0))


def adjust_contrast(channel: np.ndarray, factor: float) -> np.ndarray:
    """Scale about the mean, clipped to the channel's own range (nnU-Net's preserve_range)."""
    mean, low, high = channel.mean(), channel.min(), channel.max()
    return np.clip((channel - mean) * factor + mean, low, high)


def simulate_low_resolution(channel: np.ndarray, zoom: float) -> np.ndarray:
    """Down-sample by ``zoom`` (nearest neighbour) and back to the same shape (linear)."""
    shape = np.asarray(channel.shape)
    small = np.maximum(1, np.round(shape * zoom)).astype(int)
    down = ndimage.zoom(channel, small / shape, order=0, grid_mode=True, mode="nearest")
    return ndimage.zoom(down, shape / np.asarray(down.shape), order=1, grid_mode=True, mode="nearest")


def adjust_gamma(channel: np.ndarray, gamma: float, eps: float = 1e-7) -> np.ndarray:
    """``((v - min) / range) ** gamma`` mapped back to the range, then the channel's mean and sd
    restored (nnU-Net's retain_stats)."""
    mean, sd, low = channel.mean(), channel.std(), channel.min()
    span = channel.max() - low
    out = np.power((channel - low) / (span + eps), gamma) * span + low
    return (out - out.mean()) / (out.std() + 1e-8) * sd + mean


def apply_intensity(plan: IntensityPlan, image: np.ndarray) -> np.ndarray:
    """Apply ``plan`` to a (C, *patch) float32 array in place and return it."""
    if plan.noise_std > 0:
        noise = np.random.default_rng(plan.noise_seed).standard_normal(image.shape, dtype=np.float32)
        image += noise * np.float32(plan.noise_std)
    for c in range(image.shape[0]):
        if plan.blur_sigma[c] > 0:
            image[c] = ndimage.gaussian_filter(image[c], float(plan.blur_sigma[c]))
        if plan.contrast[c] != 1:
            image[c] = adjust_contrast(image[c], float(plan.contrast[c]))
        if plan.lowres[c] != 1:
            image[c] = simulate_low_resolution(image[c], float(plan.lowres[c]))
        if plan.gamma[c] != 1:
            image[c] = adjust_gamma(image[c], float(plan.gamma[c]))
    return image
