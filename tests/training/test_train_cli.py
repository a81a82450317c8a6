"""``glioseg train`` refusals and aborts: a clear one-line error, exit code 2, nothing lost."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from glioseg.checkpoint_io import load_checkpoint, previous_path, sidecar_path
from glioseg.files import file_sha256
from glioseg import run_io
from glioseg.run_io import RunFiles

from ._runs import run_inprocess, run_subprocess, train_args, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(phantom_cache, tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-epoch run (no validation) and its config file."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("finished")
        config = write_config(folder, epochs=1, steps_per_epoch=2, val_fraction=0.0)
        assert run_inprocess(train_args(phantom_cache, folder / "run", config)) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "run", config


def error_of(caplog, argv: list[str]) -> str:
    """Run ``glioseg ARGV`` expecting exit code 2; the one ERROR line it logged, without traceback."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_inprocess(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].name == "glioseg" and errors[0].exc_info is None
    return errors[0].getMessage()


def hashes(run: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(run.iterdir()) if p.is_file()}


def test_resume_without_a_run_or_a_checkpoint_is_an_error(phantom_cache, finished_run, tmp_path, caplog):
    _, config = finished_run
    message = error_of(caplog, train_args(phantom_cache, tmp_path / "nothing", config, "--resume"))
    assert "--resume needs" in message and run_io.CONFIG in message
    assert not (tmp_path / "nothing").exists()
    # a run killed before its first checkpoint: settings and logs, no last.pt
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(RunFiles(finished_run[0]).config, started)
    message = error_of(caplog, train_args(phantom_cache, started, config, "--resume"))
    assert "--resume needs a checkpoint" in message and run_io.LAST in message


def test_a_new_run_into_a_finished_run_folder_is_refused_and_changes_nothing(
        phantom_cache, finished_run, caplog):
    run, config = finished_run
    before = hashes(run)
    message = error_of(caplog, train_args(phantom_cache, run, config))
    assert "a run is already there" in message and "--resume" in message
    assert hashes(run) == before


@pytest.mark.parametrize("extra, changed", [
    (["--lr", "0.5"], "lr"),
    (["--patch", "32", "32", "32"], "patch"),
    (["--precision", "bf16"], "precision"),
])
def test_resume_with_a_changed_setting_is_refused(phantom_cache, finished_run, extra, changed, caplog):
    run, config = finished_run
    before = hashes(run)
    message = error_of(caplog, train_args(phantom_cache, run, config, "--resume", *extra))
    assert f"only --epochs, --workers, --device may change, not {changed}" in message
    assert hashes(run) == before


def test_resume_with_a_changed_config_file_is_refused(phantom_cache, finished_run, tmp_path, caplog):
    run, _ = finished_run
    edited = write_config(tmp_path, epochs=1, steps_per_epoch=2, val_fraction=0.0,
                          model_options={"init_filters": 16})
    message = error_of(caplog, train_args(phantom_cache, run, edited, "--resume"))
    assert "not model_options" in message


def test_unknown_setting_in_the_config_file_is_an_error(phantom_cache, tmp_path, caplog):
    config = write_config(tmp_path, learning_rate=0.1)
    message = error_of(caplog, train_args(phantom_cache, tmp_path / "run", config))
    assert "unknown key(s) learning_rate" in message and "valid keys:" in message
    assert not RunFiles(tmp_path / "run").last.exists()


def test_a_new_run_replaces_the_logs_of_one_that_died_before_its_first_checkpoint(
        phantom_cache, finished_run, tmp_path):
    run, config = finished_run
    dead = tmp_path / "run"
    dead.mkdir()
    for name in (run_io.CONFIG, run_io.SPLIT, run_io.STEPS, run_io.METRICS):
        shutil.copy(run / name, dead)
    assert run_inprocess(train_args(phantom_cache, dead, config)) == 0
    assert RunFiles(dead).read_steps() == RunFiles(run).read_steps()
    assert len(RunFiles(dead).read_metric_rows()) == 1


@pytest.mark.slow
def test_persistent_nonfinite_steps_in_fp32_abort_naming_the_cases_and_keep_the_last_good_checkpoint(
        phantom_cache, tmp_path):
    """An absurd learning rate: step 1 is finite and its update makes the weights ~1e20, after which
    every fp32 forward overflows. Three non-finite steps in a row stop the run."""
    config = write_config(tmp_path, lr=1e20, epochs=2, steps_per_epoch=3, checkpoint_every=1,
                          precision={"policy": "fp32", "max_nonfinite": 3})
    run = tmp_path / "run"
    result = run_subprocess(train_args(phantom_cache, run, config))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("ERROR glioseg:")]
    assert len(error) == 1, result.stderr[-2000:]
    assert "3 consecutive steps with non-finite loss or gradients in fp32 (steps 2-4)" in error[0]
    train_ids = load_checkpoint(RunFiles(run).last)["split"]["train"]
    named = error[0].split("batches held case(s) ")[1].split(";")[0].split(", ")
    assert len(named) == 3 and set(named) <= set(train_ids)
    assert f"the last good checkpoint is {run / 'last.pt'}, untouched" in error[0]
    # the checkpoint after step 1, written once: no later save replaced it (there is no .prev)
    state = load_checkpoint(RunFiles(run).last)
    assert state["progress"]["step"] == 1 and state["controller"]["nonfinite_run"] == 0
    assert not previous_path(RunFiles(run).last).exists()
    assert sidecar_path(RunFiles(run).last).read_text().split()[0] == file_sha256(RunFiles(run).last)
    assert [r["skipped"] for r in RunFiles(run).read_steps()] == ["0", "1", "1"]
