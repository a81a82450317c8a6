"""Fixtures of the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def brats18(shared_data) -> Path:
    """The 20 real BraTS 2018 cases (tests/conftest.py's ``shared_data`` rule; skips when absent)."""
    return shared_data / "brats18"
