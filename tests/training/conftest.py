"""Fixtures of the trainer tests: one tiny phantom cache per session (one_thread is in tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from glioseg.data.formats import discover
from glioseg.data.phantom import write_dataset
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory) -> Path:
    """A preprocessed glioseg cache of four 48×48×40 phantom cases (read by every run, never written)."""
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root / "raw", cases=4, seed=0, shape=(48, 48, 40))
    return preprocess_dataset(discover(root / "raw"), root / "cache", PreprocessConfig(), workers=1)

