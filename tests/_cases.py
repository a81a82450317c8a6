"""The suite's two shared rules: where the real data lies, and how a synthetic case is written.

Every test that needs ``../shared/data`` goes through :func:`shared_data_dir` (the ``shared_data``
fixture of tests/conftest.py wraps it), and every synthetic BraTS-layout case folder is written by
:func:`write_case_files`, whatever the content of its arrays (each test folder keeps its own
generator, since their intensity codes are what their assertions read).
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "GLIOSEG_SHARED_DATA"
CHANNEL_NAMES = ("flair", "t1", "t1ce", "t2")


def data_candidates() -> list[Path]:
    """``$GLIOSEG_SHARED_DATA`` first, then ``<repo>/../shared/data`` (the main checkout and
    /work/wtNN worktrees), then one level up (worktrees nested as wt/NAME)."""
    candidates = [REPO / ".." / "shared" / "data", REPO / ".." / ".." / "shared" / "data"]
    if os.environ.get(DATA_ENV):
        candidates.insert(0, Path(os.environ[DATA_ENV]))
    return candidates


def shared_data_dir() -> Path | None:
    """The first candidate holding ``brats18/``, resolved; None when the real data is absent."""
    for path in data_candidates():
        if (path / "brats18").is_dir():
            return path.resolve()
    return None


def missing_data_reason() -> str:
    return (f"real data not found at {', '.join(str(c) for c in data_candidates())} "
            f"(set {DATA_ENV} to the shared data folder)")


def write_volume(path: Path, array, affine: np.ndarray, *, qform_code: int = 1, sform_code: int = 1,
                 dtype=None, **fields) -> Path:
    """One NIfTI file with nibabel (never glioseg's writer, so reader tests do not depend on it);
    ``fields`` are raw header fields set after the affine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(dtype or array.dtype)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    for key, value in fields.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def write_case_files(root: Path, case_id: str, channels, label, affine: np.ndarray, *, sep: str = "_",
                     suffixes: dict[str, str] | None = None, label_dtype=None, qform_code: int = 1,
                     sform_code: int = 1) -> Path:
    """One BraTS-layout case folder ``root/case_id`` → the folder.

    ``channels`` is ``{name: array}`` or a (4, ...) array in flair, t1, t1ce, t2 order; ``suffixes``
    maps a channel name to its file suffix (BraTS 2023 spells them t2f, t1n, ...)."""
    if not isinstance(channels, dict):
        channels = dict(zip(CHANNEL_NAMES, channels))
    suffixes = suffixes or {name: name for name in channels}
    folder = Path(root) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in channels.items():
        write_volume(folder / f"{case_id}{sep}{suffixes[name]}.nii.gz", array, affine,
                     qform_code=qform_code, sform_code=sform_code)
    label = np.asarray(label)
    write_volume(folder / f"{case_id}{sep}seg.nii.gz", label.astype(label_dtype or label.dtype), affine,
                 qform_code=qform_code, sform_code=sform_code)
    return folder
