"""Two CPU processes with the gloo backend: ``torchrun --nproc_per_node=2 -m glioseg train``."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glioseg.inference.bundle import load_bundle
from glioseg.checkpoint_io import load_checkpoint
from glioseg import run_io
from glioseg.run_io import RunFiles

from ._runs import subprocess_env, train_args, write_config

RANKS = 2


def rank_logs(log_dir: Path) -> list[str]:
    """Each rank's stderr (torchrun --log-dir ... --redirects 3), by rank."""
    return [next(log_dir.glob(f"*/attempt_0/{rank}/stderr.log")).read_text() for rank in range(RANKS)]


def logged(text: str, pattern: str) -> str:
    found = re.findall(pattern, text)
    assert len(found) == 1, (pattern, text[-3000:])
    return found[0]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_gloo_ranks_train_one_run_folder_and_agree_on_precision(phantom_cache, tmp_path):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=2,
                          precision={"policy": "auto", "probe_steps": 1})
    run, log_dir = tmp_path / "run", tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
               "--log-dir", str(log_dir), "--redirects", "3",
               "-m", "glioseg", *train_args(phantom_cache, run, config)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    logs = rank_logs(log_dir)
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(log[-3000:] for log in logs)

    # rank 0 alone writes the run folder: one row per step of a rank, one probe event
    assert [int(r["step"]) for r in RunFiles(run).read_steps()] == [1, 2]
    assert [e["signal"] for e in RunFiles(run).read_events()] == ["probe"]
    for name in (run_io.CONFIG, run_io.SPLIT, run_io.METRICS, run_io.LAST, run_io.BEST, run_io.REPORT):
        assert (run / name).is_file(), name
    assert not list(run.glob(".part-*"))

    # both ranks joined, probed and ended with the same precision decisions
    summaries = [json.loads(logged(log, r"precision summary: (\{.*\})")) for log in logs]
    for rank, log in enumerate(logs):
        assert f"rank {rank} of {RANKS} joined (gloo)" in log
    decisions = [{k: s[k] for k in ("precision", "target", "steps_per_precision", "switches", "skipped")}
                 | {"ladder": s["probe"]["ladder"]} for s in summaries]
    assert decisions[0] == decisions[1]
    # the epoch's loss is the mean over both ranks' shards, the same on every rank
    losses = [float(logged(log, r"epoch 1: \{'step': 2, 'train_loss': ([-0-9.e]+)")) for log in logs]
    assert losses[0] == losses[1] == float(RunFiles(run).read_metric_rows()[0]["train_loss"])

    state = load_checkpoint(RunFiles(run).last)
    assert state["progress"] == {**state["progress"], "step": 2, "epoch": 1}
    assert not any(key.startswith("module.") for key in state["model"])   # the network, not the DDP wrapper
    model = load_bundle(RunFiles(run).last).build_model()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 4, 16, 16, 16))).all()
