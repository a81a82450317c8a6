"""Post-processing of a predicted segmentation, as the BraTS winners do it, chosen by cross-validation.

A decision rule and two clean-up rules. ``thresholds``: the probabilities above which a voxel is
WT, TC and ET (a region network's sigmoid outputs; 0.5 each by default, the network's own labels).
A network trained mostly on tumour-centred patches over-segments (session 14: the released fold
models' whole tumour was larger than the experts' in 23 of 27 held-out cases, median 1.24x, up to
3x), and a higher WT threshold chosen on held-out probabilities corrects that. Then two rules, each off at 0 and each a volume in mm³ (so that they
mean the same at any spacing):

- ``min_tumour_mm3``: whole-tumour components (26-connected, as BraTS's lesion-wise metrics count
  them) smaller than this are removed with the core and enhancing tumour inside them. The largest
  component is always kept, so a small single tumour is never erased.
- ``min_et_mm3``: an enhancing tumour whose total volume is below this is relabelled as tumour core
  (it stays in TC and leaves ET). Isensee et al. (BraTS 2018, "No New-Net") replaced small ET by
  necrosis: an ET of a few voxels is more often a false positive than a real enhancing rim, and the
  BraTS Dice of an empty reference is 1 only for an empty prediction.

The rules act on nested boolean regions (3, X, Y, Z) = WT, TC, ET (:func:`postprocess_regions`,
pure) or on a label map in a scheme (:func:`postprocess_label`). Which thresholds pay is measured
on held-out predictions by ``glioseg experiment postprocess``
(:mod:`glioseg.experiments.postprocess`), and a released model carries the chosen ones in its
bundle (``predict`` applies them unless ``--postprocess none``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cc3d
import numpy as np

from glioseg.config import from_dict, to_dict
from glioseg.data.labels import LabelScheme, labels_to_regions, regions_to_labels
from glioseg.errors import InputError
from glioseg.files import read_json

CONNECTIVITY = 26
# the result file of ``glioseg experiment postprocess`` (written by glioseg.experiments.postprocess)
CHOICE_KIND = "glioseg-postprocess-choice"


DEFAULT_THRESHOLDS = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PostprocessConfig:
    """Region probability thresholds (WT, TC, ET), and volumes in mm³ below which a whole-tumour
    component is removed / an ET is relabelled core."""
    min_tumour_mm3: float = 0.0
    min_et_mm3: float = 0.0
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS

    def __post_init__(self):
        for name in ("min_tumour_mm3", "min_et_mm3"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise InputError(f"postprocess.{name} must be a volume in mm^3 >= 0, got {value!r}")
        values = tuple(self.thresholds)
        if len(values) != 3 or not all(isinstance(v, (int, float)) and 0.0 < v < 1.0 for v in values):
            raise InputError(f"postprocess.thresholds must be three probabilities in (0, 1) for WT, TC, ET, "
                             f"got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", tuple(float(v) for v in values))

    @property
    def thresholded(self) -> bool:
        return self.thresholds != DEFAULT_THRESHOLDS

    @property
    def cleans(self) -> bool:
        """A clean-up rule is on (components, small ET); the thresholds act before, on probabilities."""
        return self.min_tumour_mm3 > 0 or self.min_et_mm3 > 0

    @property
    def active(self) -> bool:
        return self.cleans or self.thresholded

    def describe(self) -> str:
        if not self.active:
            return "none"
        parts = []
        if self.thresholded:
            parts.append("regions above probabilities " + ", ".join(
                f"{r} {v:g}" for r, v in zip(("WT", "TC", "ET"), self.thresholds)))
        if self.min_tumour_mm3 > 0:
            parts.append(f"tumour components < {self.min_tumour_mm3:g} mm^3 removed (the largest kept)")
        if self.min_et_mm3 > 0:
            parts.append(f"ET < {self.min_et_mm3:g} mm^3 relabelled core")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        # default thresholds are left out: bundles, indexes and prediction records written before
        # thresholds existed stay what they were (a prediction folder keeps skipping its done cases)
        out = to_dict(self)
        if not self.thresholded:
            out.pop("thresholds")
        return out

    @classmethod
    def from_dict(cls, values: dict | None) -> "PostprocessConfig":
        return from_dict(cls, values or {}, "postprocess")


def read_postprocess(path: Path | str) -> PostprocessConfig:
    """The post-processing a file names: an experiment's choice (its ``recommended`` setting: the
    chosen one where it paid in the nested estimate, else none) or a plain mapping of the fields."""
    data = read_json(path, "a post-processing file")
    if isinstance(data, dict) and data.get("kind") == CHOICE_KIND:
        data = data.get("recommended")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a post-processing choice or a mapping of "
                         "min_tumour_mm3 / min_et_mm3 / thresholds")
    try:
        return PostprocessConfig.from_dict(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def chose_with_flips(path: Path | str) -> bool:
    """Whether a post-processing file is an experiment's choice made on flipped probabilities
    (``glioseg experiment postprocess --tta``): a model carrying it should predict with flips."""
    data = read_json(path, "a post-processing file")
    return isinstance(data, dict) and data.get("kind") == CHOICE_KIND and data.get("tta") is True


def voxel_mm3(spacing: Sequence[float]) -> float:
    return float(np.prod([abs(float(s)) for s in spacing[:3]]))


def tumour_components(wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component map, voxel count per component id; index 0 is the background)."""
    components = cc3d.connected_components(np.ascontiguousarray(wt, dtype=np.uint8), connectivity=CONNECTIVITY)
    return components, np.bincount(components.ravel())


def small_components(sizes: np.ndarray, min_voxels: float) -> np.ndarray:
    """Ids of components smaller than ``min_voxels``, the largest never among them."""
    if len(sizes) <= 2 or min_voxels <= 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.arange(1, len(sizes))
    small = ids[sizes[1:] < min_voxels]
    return small[small != 1 + int(np.argmax(sizes[1:]))]


def postprocess_regions(regions: np.ndarray, spacing: Sequence[float], config: PostprocessConfig,
                        components: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Boolean regions (3, ...) WT, TC, ET, nested, with ``config``'s rules applied (a new array).
    ``components``: :func:`tumour_components` of ``regions[0]`` when the caller has them already."""
    out = np.array(regions, dtype=bool, copy=True)
    if not config.cleans:
        return out
    # nest first, as the label map does (an ET voxel is tumour core and whole tumour)
    out[1] |= out[2]
    out[0] |= out[1]
    voxel = voxel_mm3(spacing)
    if config.min_tumour_mm3 > 0 and out[0].any():
        labelled, sizes = components if components is not None else tumour_components(out[0])
        drop = small_components(sizes, config.min_tumour_mm3 / voxel)
        if drop.size:
            out[:, np.isin(labelled, drop)] = False
    if config.min_et_mm3 > 0 and 0 < out[2].sum() * voxel < config.min_et_mm3:
        out[2] = False   # its voxels stay in TC (and WT): relabelled core
    return out


def postprocess_label(label: np.ndarray, scheme: LabelScheme, spacing: Sequence[float],
                      config: PostprocessConfig) -> np.ndarray:
    """A label map in ``scheme`` with the clean-up rules applied, in the same scheme and dtype
    (the thresholds made the label map: ``OutputSpace.label_map``)."""
    if not config.cleans:
        return label
    regions = postprocess_regions(labels_to_regions(label, scheme), spacing, config)
    return regions_to_labels(regions, scheme).astype(label.dtype, copy=False)
