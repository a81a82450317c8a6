"""The errors whose message is written for the user, and the line between them and bugs.

glioseg's own checks raise a :class:`GliosegError`; the CLI prints its message as one line and
exits 2 (``--debug`` shows the traceback), as it does for an ``OSError`` (a missing file, a
permission, a full disk). Any other exception is a bug of glioseg: the CLI prints the traceback,
says so with the version, and exits 1. An error raised by a library while glioseg reads a file
(nibabel, json, yaml, zipfile, ...) is turned into a :class:`FileError` naming the file where
the file is read, not caught wholesale.
"""
from __future__ import annotations

from pathlib import Path


class GliosegError(Exception):
    """An error with a message meant for the user, not a bug."""


class InputError(GliosegError, ValueError):
    """What the user gave (an argument, a setting, a file's content) is not usable; the message
    says what and why. Also a ``ValueError``, as these checks were before they had a class."""


class FileError(InputError):
    """A file failed a check. ``str()`` reads ``<path>: <problem>``.

    The problem names the check, the value found and the value expected.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        # Errors cross process boundaries (verify and preprocess run cases in worker processes).
        return (type(self), (self.path, self.problem))
