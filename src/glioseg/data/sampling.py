"""Training patches from memory-mapped volumes: tumour-centred share, padding, augmentation.

Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: every random choice comes from
``np.random.default_rng((seed, e, i))``. Resuming at any position is therefore exact, and
DataLoader workers need no seeding. Foreground draws follow nnU-Net: pick a tumour label present
in the case uniformly, then one of its voxels, and place the patch so that this voxel is at its
centre (shifted only as far as needed to stay inside the volume where the volume is large enough).
Only the patch's region is sliced from the memory map and copied; the volume is never read whole
except once per case and process for its label, to index the foreground voxels.

Shapes: image (C, X, Y, Z) float32 z-scored with background 0; label (X, Y, Z) uint8 values of the
dataset's label scheme; a patch item is ``{"image": (C, *patch) float32, "target": (3, *patch)
float32 WT/TC/ET or (*patch) int64 class indices, "case": str, "site_id": int}``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from glioseg.config import from_dict
from glioseg.data.augment import AugmentConfig, AugmentPlan, apply_plan, read_shape, sample_plan
from glioseg.data.labels import LabelScheme, get_scheme
from glioseg.data.output_space import TARGETS, OutputSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerConfig:
    """Patch sampling. ``foreground_fraction``: share of patches centred on a tumour voxel (nnU-Net
    1/3, DALight-3D 1.0); ``id_dropout``: probability of replacing the site id by -1 (unknown), so
    the default normalisation path of site-conditioned models is trained too."""

    patch_size: tuple[int, int, int] = (128, 128, 128)
    foreground_fraction: float = 1 / 3
    samples_per_epoch: int = 250
    target: str = "regions"
    id_dropout: float = 0.0
    max_foreground_voxels: int = 10_000  # per label and case: a strided subsample keeps memory small

    def __post_init__(self):
        if len(self.patch_size) != 3 or not all(int(n) == n and n > 0 for n in self.patch_size):
            raise ValueError(f"SamplerConfig.patch_size must be three positive integers; got {self.patch_size}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"SamplerConfig.foreground_fraction must lie in [0, 1]; got {self.foreground_fraction}")
        if not 0.0 <= self.id_dropout <= 1.0:
            raise ValueError(f"SamplerConfig.id_dropout must lie in [0, 1]; got {self.id_dropout}")
        if self.samples_per_epoch < 1 or self.max_foreground_voxels < 1:
            raise ValueError("SamplerConfig.samples_per_epoch and max_foreground_voxels must be >= 1")
        if self.target not in TARGETS:
            raise ValueError(f"SamplerConfig.target must be one of {TARGETS}; got {self.target!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "SamplerConfig":
        return from_dict(cls, values, "sampler")


class Volume(NamedTuple):
    """One training case: image (C, X, Y, Z), label (X, Y, Z) or None, site id (-1 unknown)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    site_id: int = -1


@dataclass(frozen=True)
class Draw:
    """The random choices behind one item: which volume, where, and how it is augmented.

    ``start`` is the patch's first voxel in the volume (negative or beyond the end where the patch
    is padded); ``foreground`` the tumour voxel it was centred on, or None for a random patch."""

    volume: int
    start: tuple[int, int, int]
    foreground: tuple[int, int, int] | None
    site_id: int
    plan: AugmentPlan


def is_foreground_draw(index: int, fraction: float) -> bool:
    """Whether item ``index`` must be tumour-centred: exactly ⌊n·fraction⌋ of any first n items,
    spread evenly (so every batch of a sequential loader gets its share)."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def read_region(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Copy of ``array[..., start:start+size]`` over the last three axes, zero-padded outside.

    Only the overlap is sliced from ``array`` (for a memory map: only those pages are read)."""
    spatial = array.shape[-3:]
    out = np.zeros(array.shape[:-3] + tuple(size), dtype=array.dtype)
    src = tuple(slice(min(max(s, 0), d), min(max(s + n, 0), d)) for s, n, d in zip(start, size, spatial))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    if all(sl.stop > sl.start for sl in src):
        out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def foreground_voxels(label: np.ndarray, values: Sequence[int], limit: int) -> dict[int, np.ndarray]:
    """Flat indices of each label value's voxels, a strided subsample of at most ``limit`` each."""
    flat = np.asarray(label).reshape(-1)
    nonzero = np.flatnonzero(flat)
    found = flat[nonzero]
    out = {}
    for value in values:
        idx = nonzero[found == value]
        if idx.size:
            out[int(value)] = idx[:: max(1, math.ceil(idx.size / limit))]
    return out


def patch_start(centre: Sequence[int], patch: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Start of a patch centred on ``centre``, moved inside the volume where it fits (the centre
    voxel always stays inside the patch); where the volume is smaller, it is padded around."""
    out = []
    for c, p, n in zip(centre, patch, shape):
        lo, hi = min(0, n - p), max(0, n - p)
        out.append(int(min(max(c - p // 2, lo), hi)))
    return tuple(out)


class _MemmapRef(NamedTuple):
    """A whole-file ``np.memmap`` by reference, so pickling a dataset (spawn / forkserver
    workers) sends a path, not gigabytes of voxels."""

    filename: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    order: str

    @classmethod
    def of(cls, array):
        if not isinstance(array, np.memmap) or array.filename is None:
            return array
        whole = array.offset + array.nbytes == os.path.getsize(array.filename)
        if not whole or not (array.flags.c_contiguous or array.flags.f_contiguous):
            log.warning("%s: a view of a memory map is pickled by value", array.filename)
            return array
        order = "C" if array.flags.c_contiguous else "F"
        return cls(array.filename, array.dtype, array.shape, array.offset, order)

    def open(self) -> np.memmap:
        return np.memmap(self.filename, self.dtype, "r", self.offset, self.shape, self.order)


def _as_scheme(scheme: LabelScheme | str | dict) -> LabelScheme:
    if isinstance(scheme, LabelScheme):
        return scheme
    return get_scheme(scheme["name"] if isinstance(scheme, dict) else scheme)


class PatchDataset(Dataset):
    """Map-style dataset of ``config.samples_per_epoch`` patches per epoch (see the module doc).

    ``dataset[i]`` uses the epoch set by :meth:`set_epoch`; ``dataset[(e, i)]`` names it, which is
    how :func:`make_loader` reaches persistent workers (they hold their own copy of the dataset).
    """

    def __init__(self, volumes: Sequence[Volume | tuple], scheme: LabelScheme | str | dict,
                 config: SamplerConfig = SamplerConfig(), augment: AugmentConfig = AugmentConfig(),
                 seed: int = 0):
        self.volumes = [Volume(*v) for v in volumes]
        if not self.volumes:
            raise ValueError("PatchDataset needs at least one volume")
        labelled = {v.label is not None for v in self.volumes}
        if len(labelled) > 1:
            raise ValueError("PatchDataset: either every volume has a label or none has")
        for v in self.volumes:
            if v.image.ndim != 4 or (v.label is not None and v.label.shape != v.image.shape[1:]):
                raise ValueError(f"{v.case_id}: image must be (C, X, Y, Z) and label (X, Y, Z); "
                                 f"got {v.image.shape} and {None if v.label is None else v.label.shape}")
        self.scheme = _as_scheme(scheme)
        self.config, self.augment, self.seed = config, augment, int(seed)
        self.epoch = 0
        self._foreground: dict[int, dict[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.config.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def foreground(self, volume: int) -> dict[int, np.ndarray]:
        """Tumour voxels of one volume per label value (flat indices), computed once, lazily."""
        if volume not in self._foreground:
            label = self.volumes[volume].label
            self._foreground[volume] = ({} if label is None else
                                        foreground_voxels(label, sorted(self.scheme.labels),
                                                          self.config.max_foreground_voxels))
        return self._foreground[volume]

    def draw(self, index: int, epoch: int | None = None) -> Draw:
        """The random choices of item ``index`` in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng((self.seed, epoch, int(index)))
        volume = int(rng.integers(len(self.volumes)))
        shape, patch = self.volumes[volume].image.shape[1:], self.config.patch_size
        voxels = self.foreground(volume) if is_foreground_draw(index, self.config.foreground_fraction) else {}
        if voxels:
            values = sorted(voxels)
            chosen = voxels[values[int(rng.integers(len(values)))]]
            centre = tuple(int(c) for c in np.unravel_index(chosen[rng.integers(chosen.size)], shape))
            start = patch_start(centre, patch, shape)
        else:
            centre = None
            start = tuple(int(rng.integers(min(0, n - p), max(0, n - p) + 1)) for n, p in zip(shape, patch))
        plan = sample_plan(self.augment, rng, self.volumes[volume].image.shape[0])
        site = -1 if rng.random() < self.config.id_dropout else self.volumes[volume].site_id
        return Draw(volume, start, centre, int(site), plan)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside the epoch's {len(self)} samples")
        draw = self.draw(index, epoch)
        vol, patch = self.volumes[draw.volume], self.config.patch_size
        region = read_shape(draw.plan, patch)
        start = [s - (r - p) // 2 for s, r, p in zip(draw.start, region, patch)]
        image = read_region(vol.image, start, region).astype(np.float32, copy=False)
        label = None if vol.label is None else read_region(vol.label, start, region)
        image, label = apply_plan(draw.plan, image, label, patch)
        item = {"image": torch.from_numpy(image), "case": vol.case_id, "site_id": draw.site_id}
        if label is not None:
            item["target"] = torch.from_numpy(self._target(label))
        return item

    def _target(self, label: np.ndarray) -> np.ndarray:
        return OutputSpace(self.config.target, self.scheme).encode(label)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["volumes"] = [v._replace(image=_MemmapRef.of(v.image), label=_MemmapRef.of(v.label))
                            for v in self.volumes]
        return state

    def __setstate__(self, state: dict) -> None:
        reopen = (lambda a: a.open() if isinstance(a, _MemmapRef) else a)
        state["volumes"] = [v._replace(image=reopen(v.image), label=reopen(v.label)) for v in state["volumes"]]
        self.__dict__.update(state)


class EpochSampler(Sampler):
    """Yields ``(epoch, i)`` for ``indices`` (default: the whole epoch) with the dataset's epoch
    read when iteration starts (in the main process), so persistent workers follow
    :meth:`PatchDataset.set_epoch`."""

    def __init__(self, dataset: PatchDataset, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset)) if indices is None else indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        epoch = self.dataset.epoch
        return iter([(epoch, int(i)) for i in self.indices])


def _worker_init(worker_id: int) -> None:
    # Workers only slice, copy and flip; intra-op threads would fight the training process.
    torch.set_num_threads(1)


def make_loader(dataset: PatchDataset | Subset, batch_size: int, workers: int = 1, *,
                pin_memory: bool | None = None, prefetch_factor: int = 2, drop_last: bool = False,
                multiprocessing_context=None) -> DataLoader:
    """A DataLoader over a :class:`PatchDataset` (or a ``Subset`` of one: e.g. the rest of an epoch
    on resume, or one rank's share) in index order (items are already random), with persistent
    workers; memory is pinned only when CUDA is available (unless ``pin_memory`` says otherwise)."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"make_loader: batch_size must be >= 1 and workers >= 0; got {batch_size}, {workers}")
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, dataset.indices
    if not isinstance(dataset, PatchDataset):
        raise ValueError(f"make_loader needs a PatchDataset or a Subset of one; got {type(dataset).__name__}")
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True,
             "multiprocessing_context": multiprocessing_context} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(dataset, indices), num_workers=workers,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      drop_last=drop_last, worker_init_fn=_worker_init if workers > 0 else None, **extra)
