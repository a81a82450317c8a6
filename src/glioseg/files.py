"""File plumbing every floor shares: atomic writes, JSON, a file's SHA-256, unfinished parts, plain
names, a folder's exclusive lock.

A writer never leaves a half-written file at a final path: it writes to a ``.part-`` name beside
it (:func:`atomic_path`) and renames on success, so a killed process leaves only ``.part-``
files, which :func:`clean_parts` removes when the next run starts. Nothing here knows what the
files hold; the modules that read them name the file in their own errors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from glioseg.errors import FileError, InputError

log = logging.getLogger(__name__)

# A name that becomes one file or folder name (a case id, an output file): never a path
# ('..', '/'), never hidden.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PART_PREFIX = ".part-"


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The temporary name starts with ``.part-`` so that stale parts are recognisable and a
    killed writer never leaves a file at the final path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{PART_PREFIX}{final.name}.", dir=final.parent)
    # mkstemp creates 0600; results are shared files, so give them the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """``text`` at ``path`` (UTF-8) through :func:`atomic_path`; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path | str, data: Any, *, indent: int = 1, end: str = "", **dumps: Any) -> Path:
    """``json.dumps(data, indent=indent, **dumps) + end`` at ``path``, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps) + end)


def read_json(path: Path | str, what: str = "JSON") -> Any:
    """The JSON value in ``path``; a missing, unreadable or malformed file is a :class:`FileError`
    that names it and ``what`` it should hold."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileError(path, f"cannot read {what}: {exc}") from None


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_parts(*folders: Path | str) -> int:
    """Remove the ``.part-`` files a killed writer left in ``folders``; returns how many.

    Only for a folder no writer is using at the moment (a run or a case starting up).
    """
    stale = [p for folder in map(Path, folders) if folder.is_dir()
             for p in folder.glob(f"{PART_PREFIX}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("%s: removed %d unfinished .part- file(s) of an interrupted run", folders[0], len(stale))
    return len(stale)


def refuse_inside(out: Path | str, inputs, option: str = "--out") -> None:
    """An :class:`InputError` when the output folder ``out`` is one of the input folders ``inputs``
    or lies inside one: what a command writes there would become part of the data (a dataset's
    ``predictions/`` folder reads as a broken case folder to verify, evaluate and the next predict)."""
    target = Path(out).resolve()
    for folder in inputs:
        folder = Path(folder)
        if folder.is_dir() and target.is_relative_to(folder.resolve()):
            beside = folder.resolve().parent / f"{folder.resolve().name}-{target.name}"
            raise InputError(f"{option} {out} is inside the input folder {folder}: what is written there would "
                             f"be read as part of the data; give a folder outside it, such as {beside}")


@contextlib.contextmanager
def exclusive_lock(path: Path | str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs, so that two
    processes never write ``what`` at once; a second holder is refused at once with the first's pid.

    The lock is the operating system's (``flock``): it ends with the holding process, however that
    ends, so a killed run never leaves a stale lock. Where there is no ``fcntl`` (Windows) the
    block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:   # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise FileError(path, f"{what} is in use by another process (pid {holder}); wait for it to end "
                                  "or stop it, then run the command again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
