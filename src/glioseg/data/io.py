"""Checked NIfTI reading and atomic writing; geometry travels with the array.

Every problem is a :class:`DataError` (a ``ValueError``) whose message names the file and
the check that failed, so the CLI can print it without a traceback.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np


class DataError(ValueError):
    """A dataset file failed a check. ``str()`` reads ``<path>: <problem>``."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Image:
    """A voxel array with its affine (voxel index → world mm, RAS+ as NIfTI defines it).

    ``header`` is the source NIfTI header when the image was read from a file; writing a
    result "in the input's geometry" copies its qform/sform codes from it.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``'LPS'`` or ``'RAS'``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def read_image(path: Path | str, dtype: np.dtype | type | None = None) -> Image:
    """Read a NIfTI file with its affine, failing with a :class:`DataError` naming the file.

    ``dtype`` converts the scaled data (``get_fdata``-like) when given; otherwise the array
    keeps the stored dtype when there is no scaling, which keeps label files exact.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        raw = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(path, f"cannot read NIfTI: {exc}") from exc
    array = raw if dtype is None else raw.astype(dtype, copy=False)
    return Image(array=np.asarray(array), affine=np.asarray(img.affine, dtype=np.float64),
                 header=img.header, path=path)


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The temporary name starts with ``.part-`` so that stale parts are recognisable and a
    killed writer never leaves a file at the final path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".part-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def write_image(path: Path | str, array: np.ndarray, affine: np.ndarray,
                reference: nib.Nifti1Header | None = None) -> Path:
    """Write ``array`` atomically as NIfTI with ``affine``; qform/sform codes from ``reference``.

    The array's dtype is stored as is (labels stay integers). Returns the final path.
    """
    path = Path(path)
    header = reference.copy() if reference is not None else None
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(np.asarray(array).dtype)
    if reference is not None:
        img.set_qform(affine, code=int(reference["qform_code"]) or 1)
        img.set_sform(affine, code=int(reference["sform_code"]) or 1)
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    # nibabel picks the compression from the file name, so the temp file keeps the suffix.
    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + _suffix(path))
        try:
            nib.save(img, str(named))
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


# --- temporary load_case: a minimal version so that preprocessing can be built and tested;
# the robust branch supersedes it with the fully checked reader of the same signature.

def _read_stream_to_end(path: Path) -> None:
    """Decompress a ``.gz`` file to its end so that gzip checks its CRC and length."""
    if not path.name.endswith(".gz"):
        return
    import gzip
    import zlib
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(path, f"corrupt gzip stream: {exc}") from exc


def _same_geometry(ref: Image, other: Image, what: str, shape: tuple[int, ...], array: np.ndarray) -> None:
    if array.shape != shape:
        raise DataError(other.path, f"{what} shape {array.shape} differs from {ref.path.name} shape {shape}")
    if not np.allclose(other.affine, ref.affine, atol=1e-4):
        raise DataError(other.path, f"{what} affine {other.affine.tolist()} differs from "
                                    f"{ref.path.name} affine {ref.affine.tolist()}")


def load_case(case, dataset, verify_stream: bool = False) -> tuple[Image, Image | None]:
    """Read a case as a (C, X, Y, Z) float32 image in ``dataset.channels`` order, and its label.

    The image carries the first channel's affine, header and path. The label keeps the
    file's integer values, which must belong to ``dataset.scheme``.
    """
    if verify_stream:
        for path in case.files():
            _read_stream_to_end(Path(path))
    read: dict[Path, Image] = {}
    arrays, first = [], None
    for channel in dataset.channels:
        path = Path(case.images[channel])
        img = read.setdefault(path, read_image(path, dtype=np.float32))
        array = img.array if case.volume_index is None else img.array[..., case.volume_index[channel]]
        if first is None:
            first, shape = img, array.shape
            if len(shape) != 3:
                raise DataError(path, f"{channel} has shape {shape}; expected a 3-D volume")
        _same_geometry(first, img, channel, shape, array)
        if not np.isfinite(array).all():
            raise DataError(path, f"{channel} has {int((~np.isfinite(array)).sum())} non-finite voxels")
        arrays.append(array)
    image = Image(np.stack(arrays).astype(np.float32, copy=False), first.affine, first.header, first.path)
    if case.label is None:
        return image, None
    label = read_image(case.label)
    _same_geometry(first, label, "label", shape, label.array)
    values = np.unique(label.array)
    bad = [v for v in values.tolist() if v != int(v) or int(v) not in dataset.scheme.allowed]
    if bad:
        raise DataError(case.label, f"label values {bad[:10]} are not in the {dataset.scheme.name} "
                                    f"scheme's set {sorted(dataset.scheme.allowed)}")
    return image, label
