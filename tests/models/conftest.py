"""Fixtures of the model tests: one thread, pinned dropout RNG (the slow rule is tests/conftest.py's)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine the OpenMP
    barrier of every op waits for a descheduled peer: measured 10-20x slower than one thread.
    Module scope, so other test folders keep their own thread settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic_dropout():
    """Dropout layers draw from the global RNG; pin it per test so failures reproduce."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        yield

