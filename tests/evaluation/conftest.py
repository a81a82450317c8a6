"""Fixtures of the evaluation tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from ._synthetic import DATA_CANDIDATES, shared_data


@pytest.fixture(scope="session")
def brats18() -> Path:
    data = shared_data()
    if data is None:
        pytest.skip(f"real data absent: no brats18 under {', '.join(str(c) for c in DATA_CANDIDATES)}")
    return data / "brats18"
