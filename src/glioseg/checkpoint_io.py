"""Reading a checkpoint file: its sidecars, and the checks made before anything is unpickled.

Files for a checkpoint ``run/last.pt``:

- ``last.pt``            the state, a zip-format ``torch.save`` archive, loadable on its own
                         with ``torch.load(weights_only=True)``;
- ``last.pt.sha256``     its SHA-256 in ``sha256sum`` format (``<hex>  last.pt``), so
                         ``sha256sum -c last.pt.sha256`` works too;
- ``last.pt.prev`` and ``last.pt.prev.sha256``  the previous good checkpoint.

:func:`load_checkpoint` checks the SHA-256 before unpickling anything, tests the zip's own
CRC-32s, refuses legacy (non-zip) pickles and TorchScript archives, and loads with
``torch.load(weights_only=True)``. Every refusal is a :class:`CheckpointError` naming the file.

It needs only torch, so training (which writes checkpoints, :mod:`glioseg.training.checkpoint`)
and prediction (which reads the model bundle inside one) share it from the ground floor.
"""
from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from glioseg.errors import FileError

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(FileError):
    """A checkpoint could not be written or trusted. ``str()`` reads ``<path>: <problem>``."""


def sidecar_path(path: Path | str) -> Path:
    """``<name>.sha256`` beside the checkpoint."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def previous_path(path: Path | str) -> Path:
    """``<name>.prev``: the checkpoint before the latest one."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def is_torchscript(names: Iterable[str]) -> bool:
    """Whether a zip archive with these member names is TorchScript (code), not a state dict."""
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def read_sidecar(path: Path) -> str:
    """The SHA-256 that ``<name>.sha256`` records for ``path``."""
    side = sidecar_path(path)
    try:
        text = side.read_text().split()
    except FileNotFoundError:
        raise CheckpointError(path, f"no SHA-256 file {side.name} beside it; refusing an "
                                    "unverified checkpoint") from None
    if not text or len(text[0]) != 64:
        raise CheckpointError(path, f"{side.name} does not hold a SHA-256 (found {text[:1]})")
    return text[0].lower()


def _check_format(path: Path, data: bytes) -> None:
    if not data.startswith(ZIP_MAGIC):
        kind = "a legacy (non-zip) pickle" if data[:1] == b"\x80" else "not a torch archive"
        raise CheckpointError(path, f"{kind}; only zip-format torch.save checkpoints are "
                                    "loaded (re-save it with a current torch)")
    # torch.load does not check the CRC-32 of the members: a changed tensor byte would load.
    prev = previous_path(path)
    advice = "restore it from a good copy" + (f", or use {prev.name} beside it (train --resume falls back to it)"
                                              if prev.exists() else "")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(path, f"damaged zip archive, truncated or overwritten ({exc}; {len(data)} bytes); "
                                    f"{advice}") from None
    if bad is not None:
        raise CheckpointError(path, f"damaged zip archive: member {bad} fails its CRC-32 check (changed "
                                    f"after it was written, whatever the .sha256 says); {advice}")
    if is_torchscript(names):
        raise CheckpointError(path, "a TorchScript archive, not a checkpoint; refusing to load "
                                    "code from it")


def _load_verified(path: Path, map_location: Any) -> dict:
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    expected = read_sidecar(path)
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise CheckpointError(path, f"SHA-256 mismatch: file is {found[:16]}..., "
                                    f"{sidecar_path(path).name} says {expected[:16]}... "
                                    "(corrupted or modified)")
    _check_format(path, data)
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"refused by torch.load(weights_only=True): {first}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, expected a dict")
    return state


def load_checkpoint(path: Path | str, *, map_location: Any = "cpu",
                    allow_previous: bool = False) -> dict:
    """Verify the SHA-256 of ``path`` and load it with ``torch.load(weights_only=True)``.

    With ``allow_previous=True`` a missing or failing checkpoint falls back to
    ``<name>.prev`` (logged as a warning); the error of the newest one is raised when
    neither loads.
    """
    path = Path(path)
    try:
        return _load_verified(path, map_location)
    except CheckpointError as newest:
        prev = previous_path(path)
        if not allow_previous or not prev.exists():
            raise
        try:
            state = _load_verified(prev, map_location)
        except CheckpointError:
            raise newest from None
        log.warning("%s; resumed from the previous checkpoint %s instead", newest, prev.name)
        return state
