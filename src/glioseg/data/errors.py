"""The one exception type for bad dataset files (kept apart so every data module can raise it)."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file failed a check. ``str()`` reads ``<path>: <problem>``.

    The problem names the check, the value found and the value expected, so the CLI can
    print it without a traceback.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        # Errors cross process boundaries (verify runs cases in worker processes).
        return (type(self), (self.path, self.problem))
