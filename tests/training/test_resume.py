"""Kill training with SIGKILL (at a random step, and during a checkpoint write), resume, and get the
uninterrupted run's loss curve and metrics exactly (bitwise: the same float text in the logs).

The killed run is a ``python -m glioseg train`` subprocess; the reference and the resumed runs
run in this process with the same single torch thread, so all three compute identically.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from glioseg.checkpoint_io import load_checkpoint, sidecar_path
from glioseg.training.callbacks import RunStopped, StopAfterSteps
from glioseg.training.settings import train_config
from glioseg.training.trainer import train
from glioseg.run_io import RunFiles

from ._runs import (glioseg_command, run_inprocess, subprocess_env, train_args,
                    without, write_config)

pytestmark = pytest.mark.usefixtures("one_thread")

# 3 epochs of 2 steps, a checkpoint after every step, validation after every epoch
SETTINGS = {"epochs": 3, "steps_per_epoch": 2, "checkpoint_every": 1}
TOTAL_STEPS = 6


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("resume-config"), **SETTINGS)


@pytest.fixture(scope="module")
def reference(phantom_cache, config, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must reproduce."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("reference") / "run"
        assert run_inprocess(train_args(phantom_cache, run, config)) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    """Every step's loss, gradient norm, lr and precision, and every epoch's metrics, identical."""
    assert RunFiles(run).read_steps() == RunFiles(reference).read_steps()
    assert without(RunFiles(run).read_metric_rows(), "seconds") == \
        without(RunFiles(reference).read_metric_rows(), "seconds")
    events = [without(RunFiles(r).read_events(), "time")
              if RunFiles(r).events.exists() else [] for r in (run, reference)]
    assert events[0] == events[1]
    assert load_checkpoint(RunFiles(run).last)["progress"] == load_checkpoint(RunFiles(reference).last)["progress"]
    assert not list(run.glob(".part-*")), "temp files left behind"


def step_rows(run: Path) -> int:
    try:
        return max(0, len(RunFiles(run).steps.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def start_training(data: Path, run: Path, config: Path) -> subprocess.Popen:
    log = open(run.parent / f"{run.name}.log", "w")
    return subprocess.Popen(glioseg_command(train_args(data, run, config)), env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, condition, poll: float, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; fail if it finished or hung first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            return
        time.sleep(poll)
    proc.kill()
    proc.wait(30)
    pytest.fail(f"training ended (exit {proc.returncode}) before the moment to kill it came")


def resume(data: Path, run: Path, config: Path, *extra: str) -> None:
    assert run_inprocess(train_args(data, run, config, "--resume", *extra)) == 0


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_same_curve(phantom_cache, config, reference, tmp_path):
    kill_at = random.Random(4).randint(2, TOTAL_STEPS - 1)
    run = tmp_path / "run"
    proc = start_training(phantom_cache, run, config)
    kill_when(proc, lambda: step_rows(run) >= kill_at and RunFiles(run).last.exists(), poll=0.01)
    assert step_rows(run) < TOTAL_STEPS and not RunFiles(run).report.exists()
    resume(phantom_cache, run, config, "--workers", "2")   # two loader processes: the same batches
    assert_same_run(run, reference)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_a_good_checkpoint_and_resumes(
        phantom_cache, config, reference, tmp_path):
    """Killed while ``.part-`` temp files of last.pt exist (polled every 0.5 ms; a 14 MB write,
    its fsync, read-back hash and renames take tens of ms, so the window is hit reliably)."""
    run = tmp_path / "run"
    proc = start_training(phantom_cache, run, config)

    def writing() -> bool:
        return step_rows(run) >= 3 and any(n.startswith(".part-last.pt") for n in os.listdir(run))

    kill_when(proc, writing, poll=0.0005)
    assert list(run.glob(".part-last.pt*")), "killed outside the write"
    state = load_checkpoint(RunFiles(run).last, allow_previous=True)
    assert 2 <= state["progress"]["step"] < TOTAL_STEPS
    resume(phantom_cache, run, config, "--workers", "1")   # one loader process: the same batches
    assert_same_run(run, reference)


def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_fails_its_check(
        phantom_cache, config, reference, tmp_path):
    """The instant between the two renames of a save (new last.pt, old sidecar), made permanent;
    last.pt.prev is then the checkpoint at the end of epoch 3's steps, before its validation."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    sidecar_path(RunFiles(run).last).write_text("0" * 64 + "  last.pt\n")
    resume(phantom_cache, run, config)
    assert_same_run(run, reference)


def test_resume_with_more_epochs_continues(phantom_cache, config, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert run_inprocess(train_args(phantom_cache, run, config, "--resume", "--epochs", "2")) == 2   # fewer
    resume(phantom_cache, run, config, "--epochs", "4")
    steps, metrics = RunFiles(run).read_steps(), RunFiles(run).read_metric_rows()
    assert [int(r["step"]) for r in steps] == list(range(1, TOTAL_STEPS + 3))
    assert steps[:TOTAL_STEPS] == RunFiles(reference).read_steps()
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3, 4]
    assert load_checkpoint(RunFiles(run).last)["progress"]["epoch"] == 4
    assert "epochs: 4" in RunFiles(run).config.read_text()
    # the run folder now describes a 4-epoch run: resuming it again needs no --epochs
    resume(phantom_cache, run, config)
    assert len(RunFiles(run).read_steps()) == TOTAL_STEPS + 2


def interrupted(data: Path, out: Path, config: Path, after_steps: int) -> None:
    """Train in this process and stop after step ``after_steps`` (a callback; the trainer checkpoints
    that step and raises RunStopped, as a Ctrl-C after a checkpoint would leave the folder)."""
    settings = train_config(out, {}, None, config)
    with pytest.raises(RunStopped):
        train(settings, data, out, callbacks=[StopAfterSteps(after_steps)])


@pytest.mark.parametrize("policy", ["bf16", "auto"])
def test_a_low_precision_run_resumes_bitwise(phantom_cache, tmp_path, forced_probe, policy):
    """bf16 (fixed, and ``auto`` probed into bf16 after one fp32 step) interrupted after step 3 and
    resumed where the probe would now decide fp32: the same loss curve, precisions and controller
    decisions as the uninterrupted run.
    32³ patches: oneDNN's bf16 weight gradient at 2³ (the bottom of a 16³ patch) is not reliable."""
    forced_probe("fast")
    options = {"probe_steps": 1, "warmup_steps": 1, "calm_steps": 1, "min_history": 0,
               "grad_z": 1e6, "loss_z": 1e6, "curvature_z": 1e6}
    precision = {"policy": policy, **(options if policy == "auto" else {})}
    config = write_config(tmp_path, precision=precision, epochs=2, steps_per_epoch=2, patch=[32, 32, 32],
                          checkpoint_every=1)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_inprocess(train_args(phantom_cache, whole, config)) == 0
    interrupted(phantom_cache, part, config, after_steps=3)
    assert load_checkpoint(RunFiles(part).last)["progress"]["step"] == 3
    # the machine's probe now finds bf16 slower (load, another node): a resumed ``auto`` run keeps the
    # decision in its checkpoint and never probes again, so it still matches the whole run (#23)
    forced_probe("slow")
    resume(phantom_cache, part, config)
    assert_same_run(part, whole)
    precisions = [r["precision"] for r in RunFiles(whole).read_steps()]
    assert precisions == (["bf16"] * 4 if policy == "bf16" else ["fp32", "bf16", "bf16", "bf16"])
