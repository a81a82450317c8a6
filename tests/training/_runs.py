"""Helpers of the trainer tests: tiny run settings, in-process and subprocess ``glioseg`` runs, logs.

Every run trains SegResNet with ``init_filters: 8`` (the smallest its GroupNorm(8) allows) on
16³ patches of four 48×48×40 phantoms, with one torch thread per process: on a shared 2-core
machine two threads per process are several times slower than one.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

import glioseg
from glioseg.cli import main as cli_main

SRC = Path(glioseg.__file__).resolve().parents[1]

# Settings of every test run unless a test says otherwise: 3 training cases, 1 validation case,
# on the CPU also where a GPU is present (bitwise-exact resume and the fp32 probe verdict are CPU facts).
TINY = {"model": "segresnet", "model_options": {"init_filters": 8}, "patch": [16, 16, 16],
        "epochs": 2, "steps_per_epoch": 3, "batch_size": 1, "workers": 0, "precision": "fp32",
        "val_fraction": 0.25, "val_every": 1, "val_overlap": 0.25, "seed": 7,
        "device": "cpu"}


def write_config(folder: Path, **changes) -> Path:
    """A ``--config`` file with :data:`TINY` updated by ``changes``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def train_args(data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--config", str(config), *extra]


def run_inprocess(argv: list[str]) -> int:
    """``glioseg ARGV`` in this process (no interpreter start-up: several seconds saved per run)."""
    return cli_main(argv)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def glioseg_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "glioseg", *argv]


def run_subprocess(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(glioseg_command(argv), env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def without(rows: list[dict], *columns: str) -> list[dict]:
    """Rows without the columns that measure time (they differ between identical runs)."""
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]
