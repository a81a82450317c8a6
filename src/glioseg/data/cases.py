"""One case read and checked: named channels on one voxel grid, a label of the dataset's scheme.

:func:`read_case` collects every problem of a case (for ``glioseg verify``);
:func:`load_case` is the strict wrapper training and preprocessing use: it returns the
channel-first image and the label, or raises a :class:`DataError` naming each problem.

Image layouts accepted per file: 3-D (X,Y,Z) — also (X,Y,Z,1), trailing singleton axes are
squeezed — for one channel; 4-D (X,Y,Z,C) for a multi-channel file (MSD), or 5-D
(X,Y,Z,1,C), the NIfTI vector layout ITK writes. Channels come from a file by name through
``Case.volume_index`` (dataset.json's ``modality``), never by position or glob order.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glioseg.data.errors import DataError
from glioseg.data.formats import Case, Dataset, joined
from glioseg.data.header import AFFINE_TOL_MATRIX, AFFINE_TOL_MM, affines_agree, describe_affine
from glioseg.data.io import Image, read_image
from glioseg.data.labels import LabelScheme, implied_convention_problem

log = logging.getLogger(__name__)

_SHOWN_VALUES = 10


@dataclass
class CaseFiles:
    """What :func:`read_case` found: 3-D channel images, the uint8 label and its value counts."""

    case: Case
    channels: dict[str, Image] = field(default_factory=dict)
    label: Image | None = None
    label_counts: dict[int, int] | None = None
    problems: list[DataError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def case_path(case: Case) -> Path:
    """The folder holding a case's files (used to name problems that concern several files)."""
    files = case.files()
    if not files:
        return Path(case.case_id)
    return Path(os.path.commonpath([str(p.parent) for p in files]))


def value_counts(array: np.ndarray) -> dict[int | float, int]:
    """Voxel count of each value; whole values as ``int``, others as ``float``."""
    if array.size and array.dtype.kind in "ui":
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi < 1 << 16:
            flat = array.ravel(order="K")
            counts = np.bincount(flat if np.can_cast(flat.dtype, np.intp) else flat.astype(np.intp))
            return {v: int(c) for v, c in enumerate(counts) if c}
    values, counts = np.unique(array, return_counts=True)
    return {(int(v) if float(v).is_integer() else float(v)): int(c) for v, c in zip(values, counts)}


def _value(v: int | float, dtype: np.dtype) -> str:
    # The shortest text that reads back as the stored value: 1.0000001 must not print as "1".
    if isinstance(v, int) or dtype.kind != "f":
        return str(v)
    return np.format_float_positional(dtype.type(v), unique=True, trim="-")


def _listing(counts: dict, dtype: np.dtype) -> str:
    items = sorted(counts.items())
    shown = ", ".join(f"{_value(v, dtype)} ({c} voxel{'s' * (c != 1)})" for v, c in items[:_SHOWN_VALUES])
    return shown + (f" and {len(items) - _SHOWN_VALUES} more values" if len(items) > _SHOWN_VALUES else "")


def checked_label_counts(path: Path, array: np.ndarray, scheme: LabelScheme) -> dict[int, int]:
    """Counts of each label value; values must be whole numbers from ``scheme``, never rounded."""
    counts = value_counts(array)
    expected = f"whole numbers from the {scheme.name} scheme {sorted(scheme.allowed)}"
    fractional = {v: c for v, c in counts.items() if isinstance(v, float)}
    if fractional:
        raise DataError(path, f"label values are not whole numbers: {_listing(fractional, array.dtype)}; "
                              f"expected {expected}")
    unexpected = {v: c for v, c in counts.items() if v not in scheme.allowed}
    if unexpected:
        raise DataError(path, f"label values not in the {scheme.name} scheme: "
                              f"{_listing(unexpected, array.dtype)}; "
                              f"expected {expected}")
    return counts


def read_label(path: Path, scheme: LabelScheme, verify_stream: bool = True) -> tuple[Image, dict[int, int]]:
    """A label file as a uint8 (X, Y, Z) image with its checked value counts."""
    image = read_image(path, verify_stream=verify_stream)
    if image.array.ndim != 3:
        raise DataError(path, f"label has shape {image.shape}; expected a 3-D volume (X,Y,Z)")
    counts = checked_label_counts(path, image.array, scheme)
    return Image(image.array.astype(np.uint8), image.affine, image.header, path), counts


def _as_channels(path: Path, image: Image) -> np.ndarray:
    array = image.array
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    if array.ndim != 4:
        raise DataError(path, f"image has shape {image.shape}; expected a multi-channel volume "
                              "(X,Y,Z,C) or (X,Y,Z,1,C)")
    return array


def read_channels(path: Path, names: list[str], case: Case, verify_stream: bool = True) -> dict[str, Image]:
    """The channels ``names`` that ``case`` keeps in the file ``path``, as 3-D images."""
    image = read_image(path, verify_stream=verify_stream)
    if case.volume_index is None:
        if image.array.ndim != 3:
            raise DataError(path, f"{'/'.join(names)} image has shape {image.shape}; expected a 3-D volume "
                                  "(X,Y,Z) (one file per channel in this layout)")
        return {name: image for name in names}
    volumes = _as_channels(path, image)
    expected = len(case.volume_index)
    if volumes.shape[3] != expected:
        raise DataError(path, f"has {volumes.shape[3]} channel volumes (shape {image.shape}); expected "
                              f"{expected}, one per modality ({', '.join(case.volume_index)})")
    return {name: Image(volumes[..., case.volume_index[name]], image.affine, image.header, path)
            for name in names}


def constant_channels(channels: dict[str, Image]) -> list[DataError]:
    """A channel with one value everywhere (an all-zero export, a blank series) cannot be z-scored,
    so preprocess and predict refuse it; verify says so too rather than calling the case ok."""
    problems = []
    for name, image in channels.items():
        array = image.array
        if array.size and array.min() == array.max():
            value = array.flat[0]
            what = "zero everywhere (an empty image)" if value == 0 else f"{value:g} everywhere (no contrast)"
            problems.append(DataError(image.path, f"{name} image is {what}; a {name} image with the brain in "
                                                  "it is needed (preprocess and predict cannot normalise it)"))
    return problems


def grid_problems(where: Path, named: dict[str, Image]) -> list[DataError]:
    """Problems when the images ``named`` do not share one voxel grid (shape and affine)."""
    by_file: dict[Path | None, tuple[list[str], Image]] = {}
    for name, image in named.items():
        by_file.setdefault(image.path, ([], image))[0].append(name)
    files = [("/".join(names), image) for names, image in by_file.values()]
    if len(files) < 2:
        return []
    shapes = {image.shape[:3] for _, image in files}
    if len(shapes) > 1:
        listing = "; ".join(f"{name} {_name(image)} {image.shape[:3]}" for name, image in files)
        return [DataError(where, f"shape mismatch between the case's files: {listing}; expected one shape")]
    ref_name, ref = files[0]
    problems = []
    for name, image in files[1:]:
        if not affines_agree(ref.affine, image.affine):
            problems.append(DataError(where, (
                f"geometry mismatch: {name} {_name(image)} is {describe_affine(image.affine)} but "
                f"{ref_name} {_name(ref)} is {describe_affine(ref.affine)}; expected the same affine within "
                f"{AFFINE_TOL_MM} mm and {AFFINE_TOL_MATRIX} (glioseg resamples only when asked)")))
    return problems


def _name(image: Image) -> str:
    return image.path.name if image.path is not None else "(in memory)"


def _file_groups(case: Case, channels: tuple[str, ...]) -> dict[Path, list[str]]:
    groups: dict[Path, list[str]] = {}
    for name in channels:
        if name in case.images:
            groups.setdefault(case.images[name], []).append(name)
    return groups


def read_case(case: Case, dataset: Dataset, verify_stream: bool = True) -> CaseFiles:
    """Read and check every file of ``case``, collecting all problems instead of stopping."""
    out = CaseFiles(case)
    where = case_path(case)
    out.problems += case.problems
    absent = [c for c in dataset.channels if c not in case.images]
    if absent and not case.problems:
        out.problems.append(DataError(where, f"no file for channel(s) {', '.join(absent)}"))
    for path, names in _file_groups(case, dataset.channels).items():
        try:
            out.channels.update(read_channels(path, names, case, verify_stream))
        except DataError as exc:
            out.problems.append(exc)
    out.problems += constant_channels(out.channels)
    if case.label is not None:
        try:
            out.label, out.label_counts = read_label(case.label, dataset.scheme, verify_stream)
        except DataError as exc:
            out.problems.append(exc)
    if out.label_counts is not None and dataset.format != "manifest":   # a manifest states its scheme
        problem = implied_convention_problem(out.label_counts, dataset.scheme)
        if problem is not None:
            out.problems.append(DataError(case.label, problem))
    on_grid = dict(out.channels, **({"label": out.label} if out.label is not None else {}))
    out.problems += grid_problems(where, on_grid)
    if out.label_counts is not None and set(out.label_counts) <= {0}:
        out.warnings.append(f"{case.label}: label is background only (no tumour voxels)")
    return out


def load_case(case: Case, dataset: Dataset, verify_stream: bool = True) -> tuple[Image, Image | None]:
    """The case's image (C, X, Y, Z) float32 in ``dataset.channels`` order, and its label.

    The image carries the first channel's affine and header (all channels share the grid,
    checked); the label is uint8 (X, Y, Z) in the dataset's own label values, or ``None``.
    Raises a :class:`DataError` naming every problem of the case.
    """
    files = read_case(case, dataset, verify_stream)
    if files.problems:
        raise joined(case_path(case), files.problems)
    for warning in files.warnings:
        log.warning("%s", warning)
    first = files.channels[dataset.channels[0]]
    stack = np.empty((len(dataset.channels), *first.shape), dtype=np.float32)
    for i, name in enumerate(dataset.channels):
        stack[i] = files.channels[name].array
    return Image(stack, first.affine, first.header, first.path), files.label
