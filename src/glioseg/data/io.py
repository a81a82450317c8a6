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
