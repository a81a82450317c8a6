"""A run keeps the CPU kernels it measured: its checkpoints carry the choices, a resume adopts them."""
from __future__ import annotations

import pytest

from glioseg.checkpoint_io import load_checkpoint
from glioseg.models import kernel_choice
from glioseg.run_io import RunFiles

from ._runs import run_inprocess, train_args, write_config


pytestmark = pytest.mark.usefixtures("measured_kernels")


def test_a_resumed_run_reuses_the_saved_kernel_choices(phantom_cache, tmp_path, monkeypatch):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=2, val_fraction=0)
    run = tmp_path / "run"
    assert run_inprocess(train_args(phantom_cache, run, config)) == 0
    saved = load_checkpoint(RunFiles(run).last)["kernels"]
    assert any(key.startswith("group_norm/") for key in saved)
    assert saved == kernel_choice.decisions()

    # a new process knows nothing; the resumed run must compute with the run's kernels, not
    # measure again (a new measurement could choose otherwise and the curve would not be bitwise)
    kernel_choice.forget()
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: pytest.fail("measured again on resume"))
    assert run_inprocess(train_args(phantom_cache, run, config, "--resume", "--epochs", "2")) == 0
    assert kernel_choice.decisions() == saved
