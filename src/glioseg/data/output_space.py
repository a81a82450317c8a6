"""What a network's output channels mean: the one owner of "regions or classes".

- ``regions``: 3 sigmoid channels ordered WT, TC, ET (the SegResNet BraTS recipe); a voxel's
  regions are thresholded at 0.5 independently.
- ``classes``: softmax over the scheme's label values in :func:`~glioseg.data.labels.class_values`
  order, background first (DALight-3D and the U-Nets); a voxel takes the argmax class.

Training asks it for the number of output channels and the sampler's targets, prediction and
validation for probabilities, regions, the label map that is written and the uncertainty. The
target and the scheme's name are what checkpoints and released configs store; the object is
built from them once (``ModelBundle.output``, the trainer) and passed around whole.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from glioseg.data.labels import (REGIONS, LabelScheme, class_values, classes_to_regions, get_scheme,
                                 labels_to_classes, labels_to_regions, regions_to_labels)
from glioseg.errors import InputError

TARGETS: tuple[str, ...] = ("regions", "classes")
ENTROPY = {"regions": "mean binary entropy of WT, TC, ET in bits (0 certain .. 1)",
           "classes": "entropy of the class probabilities divided by log(classes) (0 .. 1)"}


@dataclass(frozen=True)
class OutputSpace:
    """``target`` ("regions" or "classes") and the label ``scheme`` whose values the outputs map to."""

    target: str
    scheme: LabelScheme

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"output target {self.target!r} is unknown; expected one of {', '.join(TARGETS)}")
        if not isinstance(self.scheme, LabelScheme):
            object.__setattr__(self, "scheme", get_scheme(self.scheme))

    @property
    def is_regions(self) -> bool:
        return self.target == "regions"

    @property
    def channels(self) -> int:
        """Output channels of a network predicting this space."""
        return len(REGIONS) if self.is_regions else len(class_values(self.scheme))

    @property
    def entropy_meaning(self) -> str:
        return ENTROPY[self.target]

    def describe(self) -> str:
        """``WT, TC, ET`` or ``brats classes``: for people (model cards, logs)."""
        return ", ".join(REGIONS) if self.is_regions else f"{self.scheme.name} classes"

    def same_outputs(self, other: "OutputSpace") -> bool:
        """Probabilities of the two can be averaged: the same target and, for classes, the same values."""
        return self.target == other.target and (
            self.is_regions or class_values(self.scheme) == class_values(other.scheme))

    # -- training targets ---------------------------------------------------------------
    def encode(self, label: np.ndarray) -> np.ndarray:
        """Label map (X, Y, Z) → the loss's target: float32 regions (3, X, Y, Z) or int64 classes."""
        if self.is_regions:
            return labels_to_regions(label, self.scheme).astype(np.float32)
        return labels_to_classes(label, self.scheme)

    # -- outputs ------------------------------------------------------------------------
    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, ...) → probabilities: sigmoid per channel, or softmax over channels."""
        return torch.sigmoid(logits) if self.is_regions else torch.softmax(logits, dim=1)

    def to_regions(self, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> np.ndarray:
        """Boolean regions (3, ...) WT, TC, ET: each region above its threshold (default 0.5), or
        argmax for classes (which take no thresholds)."""
        if self.is_regions:
            if thresholds is None:
                return probs > 0.5
            return probs > np.asarray(thresholds, dtype=probs.dtype).reshape(-1, *([1] * (probs.ndim - 1)))
        if thresholds is not None and tuple(thresholds) != (0.5, 0.5, 0.5):
            raise InputError("region thresholds apply to a region (sigmoid) network; this one predicts "
                             "classes (softmax), whose labels are the argmax")
        return classes_to_regions(np.argmax(probs, axis=0), self.scheme)

    def label_map(self, probs: np.ndarray, scheme: LabelScheme | None = None,
                  thresholds: Sequence[float] | None = None) -> np.ndarray:
        """The uint8 label map predict writes for ``probs`` (K, ...), in ``scheme``'s values (default:
        this space's), regions nested as :func:`~glioseg.data.labels.regions_to_labels` nests them."""
        return regions_to_labels(self.to_regions(probs, thresholds), scheme or self.scheme)

    def region_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """(3, ...) probabilities of WT, TC, ET; for classes the sum over each region's classes."""
        if self.is_regions:
            return probs
        member = labels_to_regions(np.asarray(class_values(self.scheme)), self.scheme)  # (3, K) booleans
        return np.tensordot(member.astype(np.float32), probs, axes=(1, 0))

    def entropy(self, probs: np.ndarray) -> np.ndarray:
        """Uncertainty in [0, 1] (see :data:`ENTROPY`)."""
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        if self.is_regions:
            bits = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
            return bits.mean(axis=0).astype(np.float32)
        return (-(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])).astype(np.float32)
