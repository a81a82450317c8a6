"""Writing checkpoints that survive crashes and full disks (the file layout and the reading side:
:mod:`glioseg.checkpoint_io`).

:func:`save_checkpoint` checks that the state holds only tensors and plain Python values,
serialises it in memory, writes a ``.part-`` temp file in the same folder, fsyncs it, reads it
back and compares the hash, then renames. The order of the renames keeps at least one of
``last.pt`` / ``last.pt.prev`` valid at every instant, so a SIGKILL at any point loses at most
the checkpoint being written; ``load_checkpoint(path, allow_previous=True)`` falls back to the
previous one. A full disk raises ``OSError(ENOSPC, "disk full at <dir> ...")`` and removes
the temp files; the existing checkpoints are untouched.

Usage (trainer)::

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "precision": ctrl.state_dict(), "rng": capture_rng_state(gens), "epoch": epoch}
    save_checkpoint(run / "last.pt", state)
    ...
    state = load_checkpoint(run / "last.pt", allow_previous=True)   # glioseg.checkpoint_io
"""
from __future__ import annotations

import collections
import errno
import hashlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from glioseg.checkpoint_io import CheckpointError, previous_path, read_sidecar, sidecar_path
from glioseg.files import file_sha256

log = logging.getLogger(__name__)

# Exact types (not subclasses: a namedtuple or IntEnum pickles by class and would then fail
# under weights_only=True) that torch.load(weights_only=True) accepts.
_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray,
            torch.dtype, torch.device, torch.Size)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_MAPPINGS = (dict, collections.OrderedDict)
_SEQUENCES = (list, tuple, set)
_MARGIN = 1 << 16  # the sidecars and file-system slack beside the checkpoint's own bytes


def validate_state(state: Any, where: str = "state") -> None:
    """Raise ValueError naming the first value a weights-only load would refuse.

    Allowed: tensors, None, bool, int, float, complex, str, bytes, torch dtype/device/Size,
    and dict / OrderedDict / list / tuple / set of those (keys included).
    """
    kind = type(state)
    if kind in _SCALARS or kind in _TENSORS:
        return
    if kind in _MAPPINGS:
        for key, value in state.items():
            validate_state(key, f"{where} key {key!r}")
            validate_state(value, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for index, value in enumerate(state):
            validate_state(value, f"{where}[{index}]")
        return
    raise ValueError(f"{where}: a {kind.__module__}.{kind.__qualname__} cannot be stored in a "
                     "checkpoint (only tensors and plain Python values load with "
                     "weights_only=True); convert it, e.g. torch.from_numpy(a), "
                     "float(x), str(path), .tolist()")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync; the single place that touches the disk (tests inject ENOSPC here)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecar_text(digest: str, name: str) -> bytes:
    return f"{digest}  {name}\n".encode()


def _is_valid(path: Path) -> bool:
    try:
        return path.exists() and file_sha256(path) == read_sidecar(path)
    except (OSError, CheckpointError):
        return False


def _temp_path(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".part-{final.name}.", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _remove_stale_parts(final: Path) -> None:
    """A run killed mid-write leaves ``.part-`` files; they are never valid, drop them."""
    for stale in final.parent.glob(f".part-{final.name}.*"):
        stale.unlink(missing_ok=True)


def _check_free_space(final: Path, size: int, disk_usage: Callable) -> None:
    """Refuse to start a write that cannot fit; warn while the run's checkpoints would not.

    A save needs room for one more copy (the temporary file); a run keeps about five (last,
    last.prev, best, best.prev and the temporary file).
    """
    free, needed, steady = disk_usage(final.parent).free, size + _MARGIN, 5 * size
    if free < needed:
        raise OSError(errno.ENOSPC, f"disk full at {final.parent}: checkpoint {final.name} needs "
                                    f"{needed / 2**20:.1f} MiB free, {free / 2**20:.1f} MiB are (a run keeps "
                                    f"about 5 checkpoints of {size / 2**20:.1f} MiB: last, last.prev, best, "
                                    "best.prev and the file being written); the previous checkpoint is kept")
    if free < steady:
        log.warning("%s: %.1f MiB free; a run's checkpoints need about %.1f MiB (5 x %.1f MiB)", final.parent,
                    free / 2**20, steady / 2**20, size / 2**20)


def _serialise(path: Path, state: Mapping) -> bytes:
    validate_state(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # any failure here means the file could never be resumed from
        raise CheckpointError(path, f"state does not reload with weights_only=True: {exc}")
    return data


def _write_verified(final: Path, data: bytes, digest: str) -> tuple[Path, Path]:
    """Write data and sidecar to temp files; return them once both are on disk and verified."""
    tmp_data, tmp_side = _temp_path(final), _temp_path(sidecar_path(final))
    try:
        _write_bytes(tmp_data, data)
        if file_sha256(tmp_data) != digest:
            raise CheckpointError(final, "read-back SHA-256 differs from the written bytes "
                                         "(storage error); previous checkpoint kept")
        _write_bytes(tmp_side, _sidecar_text(digest, final.name))
    except BaseException:
        tmp_data.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
        raise
    return tmp_data, tmp_side


def _keep_previous(final: Path) -> None:
    """Make ``<name>.prev`` a copy of the current checkpoint without a moment without one.

    A hard link (no extra space) under a temp name, renamed over ``.prev``; the sidecar goes
    first, so a crash in between leaves ``.prev`` invalid but ``final`` intact.
    """
    if not _is_valid(final):
        if final.exists():
            log.warning("%s fails its SHA-256 check; not keeping it as %s", final,
                        previous_path(final).name)
        return
    prev = previous_path(final)
    tmp_side = _temp_path(sidecar_path(prev))
    tmp_link = _temp_path(prev)
    try:
        _write_bytes(tmp_side, _sidecar_text(read_sidecar(final), prev.name))
        tmp_link.unlink()
        try:
            os.link(final, tmp_link)
        except OSError:  # file systems without hard links
            _write_bytes(tmp_link, final.read_bytes())
        os.replace(tmp_side, sidecar_path(prev))
        os.replace(tmp_link, prev)
    finally:
        tmp_side.unlink(missing_ok=True)
        tmp_link.unlink(missing_ok=True)


def save_checkpoint(path: Path | str, state: Mapping[str, Any], *,
                    disk_usage: Callable = shutil.disk_usage) -> Path:
    """Write ``state`` atomically to ``path`` with a SHA-256 sidecar; keep the previous one.

    Raises ValueError (naming the key path) for a value weights_only loading would refuse,
    and ``OSError(ENOSPC)`` "disk full at <dir>" with nothing changed when the disk is full
    or ``disk_usage`` (``shutil.disk_usage``) says the checkpoint cannot fit, with the space
    it needs. Returns the final path.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    data = _serialise(final, state)
    digest = hashlib.sha256(data).hexdigest()
    _check_free_space(final, len(data), disk_usage)
    _remove_stale_parts(final)
    _remove_stale_parts(sidecar_path(final))
    try:
        tmp_data, tmp_side = _write_verified(final, data, digest)
        try:
            _keep_previous(final)
            os.replace(tmp_data, final)
            os.replace(tmp_side, sidecar_path(final))
            _fsync_dir(final.parent)
        finally:
            tmp_data.unlink(missing_ok=True)
            tmp_side.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full at {final.parent}: checkpoint "
                                        f"{final.name} not written; the previous checkpoint "
                                        "is kept and no temp files are left") from exc
        raise
    log.debug("checkpoint %s written (%d bytes, sha256 %s)", final, len(data), digest[:12])
    return final
