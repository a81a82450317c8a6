"""The suite's one ``slow`` rule (tests/conftest.py): a default run skips every slow test, in any
folder; ``-m slow`` selects them. Checked in a child pytest on a slow test outside tests/models/,
whose own conftest once held the only rule."""
from __future__ import annotations

import subprocess
import sys

from tests._cases import REPO

SLOW_TEST = "tests/training/test_ddp.py::test_two_gloo_ranks_train_one_run_folder_and_agree_on_precision"


def _pytest(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_a_default_run_skips_a_slow_test_outside_the_model_tests():
    out = _pytest(SLOW_TEST)
    assert "1 skipped" in out and "run with -m slow" in out, out[-2000:]


def test_minus_m_slow_selects_it():
    out = _pytest("-m", "slow", "--collect-only", SLOW_TEST)
    assert "1 test collected" in out and "deselected" not in out, out[-2000:]
