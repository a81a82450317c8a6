"""Writing predictions: atomic NIfTI in the input's geometry, verified after writing, and a sidecar.

Per case, in this order: ``<case>.nii.gz`` (labels), ``<case>.seg.nrrd`` (the same labels as a
3D Slicer segmentation with named, coloured segments: :mod:`glioseg.evaluation.segment_files`), optionally ``probabilities/<case>.nii.gz``
and ``uncertainty/<case>.nii.gz`` (in sub-folders, so a folder of predictions holds only label
maps at its top, which is what ``glioseg evaluate --pred`` reads), and last ``<case>.json``.
A case is written as one unit (:func:`case_unit`): every file goes to a ``.part-`` name first,
and only when all of them are written are they renamed, the sidecar last, so a full disk
never leaves a label map at its final path without its sidecar. Each NIfTI is read back and
its shape, affine, qform, sform, codes and voxels compared with what was meant, and removed
on any difference. The sidecar records the SHA-256 of every output, so a case counts as done on a
re-run only when its sidecar exists, asks for the same inputs, models and settings, and every
output still has that hash.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np

from glioseg import files
from glioseg.data.io import DataError, Image, write_image

AFFINE_TOL = 1e-5   # float32 sform rows round-trip exactly; this only absorbs float64 noise
QFORM_TOL = 1e-4    # the quaternion representation of the qform is float32
OUTPUTS = {"label": "{}.nii.gz", "segments": "{}.seg.nrrd", "probabilities": "probabilities/{}.nii.gz",
           "uncertainty": "uncertainty/{}.nii.gz"}


def output_path(out: Path, case_id: str, what: str) -> Path:
    return Path(out) / OUTPUTS[what].format(case_id)


def sidecar_path(out: Path, case_id: str) -> Path:
    return Path(out) / f"{case_id}.json"


def clean_parts(out: Path) -> int:
    """Remove ``.part-*`` files a killed run left in ``out`` and its map folders; returns how many."""
    folders = [Path(out)] + [Path(out) / Path(pattern).parent for pattern in OUTPUTS.values() if "/" in pattern]
    return files.clean_parts(*folders)


def _form_problems(hdr, ref, affine: np.ndarray, key: str, tol: float) -> list[str]:
    """A qform/sform must say what the input's says: the same code and matrix when the input
    sets one; when the input leaves it unset (code 0), unset or equal to the input's affine."""
    getter = "get_qform" if key == "qform_code" else "get_sform"
    name = key[:5]
    got_code, want_code = int(hdr[key]), int(ref[key]) if ref is not None else 0
    got = getattr(hdr, getter)()
    if want_code > 0:
        if got_code != want_code:
            return [f"{key} {got_code}, expected {want_code}"]
        want = getattr(ref, getter)()
        return [] if np.allclose(got, want, rtol=0, atol=tol) else [f"{name} {got.tolist()}, expected {want.tolist()}"]
    if got_code > 0 and not np.allclose(got, affine, rtol=0, atol=tol):
        return [f"{name} {got.tolist()} (code {got_code}) disagrees with the input's affine {affine.tolist()}"]
    return []


def geometry_problems(written: nib.Nifti1Image, array: np.ndarray, reference: Image) -> list[str]:
    """Differences between a reloaded output and the input's geometry (empty when all agree)."""
    problems = []
    if written.shape != array.shape:
        problems.append(f"shape {written.shape}, expected {array.shape}")
    if not np.allclose(written.affine, reference.affine, rtol=0, atol=AFFINE_TOL):
        problems.append(f"affine {written.affine.tolist()}, expected {reference.affine.tolist()}")
    problems += _form_problems(written.header, reference.header, reference.affine, "qform_code", QFORM_TOL)
    problems += _form_problems(written.header, reference.header, reference.affine, "sform_code", AFFINE_TOL)
    return problems


def write_verified(path: Path, array: np.ndarray, reference: Image) -> str:
    """Write ``array`` in ``reference``'s geometry, reload and compare; returns the file's SHA-256.

    Any difference removes the file and raises :class:`DataError`.
    """
    write_image(path, array, reference.affine, reference=reference.header)
    try:
        written = nib.load(str(path))
        problems = geometry_problems(written, array, reference)
        data = np.asanyarray(written.dataobj)
        if not problems and (data.dtype != array.dtype or not np.array_equal(data, array)):
            problems.append(f"voxels differ after reloading (dtype {data.dtype}, expected {array.dtype})")
    except (OSError, EOFError, ValueError) as exc:
        problems = [f"cannot reload: {exc}"]
    if problems:
        path.unlink(missing_ok=True)
        raise DataError(path, "written file does not match the input's geometry and was removed: "
                              + "; ".join(problems))
    return files.file_sha256(path)


def write_sidecar(path: Path, record: dict) -> Path:
    """The case's JSON record, written atomically to ``path`` (a staged name in a case unit)."""
    return files.write_json(path, record)


@contextlib.contextmanager
def case_unit() -> Iterator[Callable[[Path], Path]]:
    """Stage a case's files: ``stage(final)`` gives the ``.part-`` name to write ``final`` to.

    When the block ends without an error, the staged files are renamed onto their final paths
    in the order staged (renames need no free space); on an error none is, and the staged files
    are removed. A kill between renames leaves whole files only; ``clean_parts`` removes parts.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(final: Path) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(f".part-{os.getpid()}-{final.name}")  # same suffix: nibabel compresses alike
        staged.append((part, final))
        return part

    try:
        yield stage
        for part, final in staged:
            os.replace(part, final)
    finally:
        for part, _ in staged:
            part.unlink(missing_ok=True)


def _read_sidecar(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(out: Path, case_id: str, request: dict) -> bool:
    """True when the case was finished by a run with the same ``request`` (inputs, models,
    settings) and every output it recorded is on disk with the recorded SHA-256 and shape."""
    record = _read_sidecar(sidecar_path(out, case_id))
    if record is None or record.get("request") != request:
        return False
    for what, entry in record.get("outputs", {}).items():
        if what not in OUTPUTS or entry.get("file") != OUTPUTS[what].format(case_id):
            return False
        path = output_path(out, case_id, what)
        if not path.is_file():
            return False
        try:
            if files.file_sha256(path) != entry.get("sha256"):
                return False
            # NIfTI maps record their shape; the .seg.nrrd (not NIfTI) is checked by its hash alone.
            if "shape" in entry and list(nib.load(str(path)).shape) != entry["shape"]:
                return False
        except (OSError, ValueError):
            return False
    return set(record.get("outputs", {})) == set(request["outputs"])
