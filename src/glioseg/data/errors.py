"""The error of the data layer: a dataset file (or folder) failed a check."""
from __future__ import annotations

from glioseg.errors import FileError


class DataError(FileError):
    """A dataset file failed a check. ``str()`` reads ``<path>: <problem>``.

    The problem names the check, the value found and the value expected, so the CLI can
    print it without a traceback.
    """
