"""The records an experiment passes between its floors: a run's job and its result.

:class:`Job` is what one run needs (built by :func:`glioseg.experiments.job.make_job`, pickled to
worker processes and cluster jobs); :class:`RunResult` is what it leaves in
``DIR/results/<arm>/fold<k>-seed<s>.json``, read by the results tables, figures, the report and
the release tools. Both are frozen dataclasses that check themselves when built, so a damaged or
foreign result file fails naming itself instead of a ``KeyError`` deep in a table, and every
field is spelled once, here. Result files written before these records (``docs/results/
experiments``) read unchanged: the fields are the keys they always had.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glioseg.config import from_dict, to_dict
from glioseg.evaluation.evaluate import COLUMNS
from glioseg.experiments.spec import CHECKPOINTS, EvaluationSpec
from glioseg.files import read_json, write_text_atomic
from glioseg.run_io import CURVE_COLUMNS
from glioseg.training.recipe import TrainConfig

SPLIT_KEYS = ("train", "val", "test")


@dataclass(frozen=True)
class Job:
    """One run of an experiment: where it trains and reports, its settings, its cases."""
    arm: str
    fold: int
    seed: int
    run_dir: str
    result: str
    cache: str
    data: str | tuple[str, ...]       # the dataset, or the datasets used as one
    config: dict[str, Any]            # the arm's TrainConfig (plain values: picklable, JSON-able)
    split: dict[str, list[str]]       # train / val / test case ids of the fold
    evaluation: EvaluationSpec
    eval_device: str = "cpu"
    minutes: float | None = None
    threads: int | None = None

    def __post_init__(self):
        missing = [k for k in SPLIT_KEYS if not isinstance(self.split.get(k), list)]
        if missing:
            raise ValueError(f"{self.name}: the split lacks {', '.join(missing)}")
        if not self.split["test"]:
            raise ValueError(f"{self.name}: the fold holds out no case")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"{self.name}: minutes must be positive, got {self.minutes}")
        self.train_config()   # the settings must read as a TrainConfig (checked, not kept)

    @property
    def name(self) -> str:
        return f"{self.arm} fold {self.fold} seed {self.seed}"

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, "experiment run")


@dataclass(frozen=True)
class RunCost:
    """What a run cost (``experiments.measure``); ``device_description``, ``load`` and ``cpus``
    (the CPU model of each training attempt) are absent from results written before they were
    recorded."""
    params: int
    flops: int
    patch: tuple[int, ...]
    steps: int
    s_per_step: float | None
    train_step_seconds: float
    train_wall_s: float | None
    peak_mib: float | None
    peak_measure: str | None
    eval_s_per_case: float
    device: str
    threads: int
    device_description: str | None = None
    load: list | None = None
    cpus: list | None = None


@dataclass(frozen=True)
class RunResult:
    """A finished run: its held-out rows (``glioseg evaluate``'s columns), cost, validation curve
    (:data:`~glioseg.run_io.CURVE_COLUMNS`), precision summary and budget stop (None when absent)."""
    arm: str
    fold: int
    seed: int
    model: str
    checkpoint: str
    test_cases: tuple[str, ...]
    rows: tuple[dict, ...]
    cost: RunCost
    curve: tuple[dict, ...]
    precision: dict | None
    budget_stop: dict | None
    config: dict[str, Any]

    def __post_init__(self):
        where = f"result of {self.arm} fold {self.fold} seed {self.seed}"
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"{where}: checkpoint must be one of {', '.join(CHECKPOINTS)}, got {self.checkpoint!r}")
        bad = next((r for r in self.rows if set(r) != set(COLUMNS)), None)
        if bad is not None:
            raise ValueError(f"{where}: a row has columns {sorted(bad)}; expected {list(COLUMNS)}")
        scored = {r["case"] for r in self.rows}
        if scored != set(self.test_cases):
            raise ValueError(f"{where}: rows score {sorted(scored)}, not the held-out cases {list(self.test_cases)}")
        bad = next((r for r in self.curve if set(r) - set(CURVE_COLUMNS)), None)
        if bad is not None:
            raise ValueError(f"{where}: a curve row has columns {sorted(bad)}; expected {list(CURVE_COLUMNS)}")

    @property
    def device(self) -> str:
        """What the run was timed on: the device line of its precision summary or its cost (older
        results: the device and its torch threads), and the CPU model where recorded."""
        described = ((self.precision or {}).get("device_description") or self.cost.device_description
                     or f"{self.cost.device}, {self.cost.threads} threads")
        # two CPUs with the same instruction sets (a Xeon and a Zen 4 with AVX512-BF16) describe
        # alike; the model name tells their timings apart
        return described + (f" on {' / '.join(dict.fromkeys(self.cost.cpus))}" if self.cost.cpus else "")

    def policy(self) -> str:
        """The precision policy of the run's settings, in either of the forms runs were saved in."""
        return TrainConfig.from_dict(self.config, "a run's result").precision.policy

    def steps_per_precision(self) -> dict[str, int]:
        return (self.precision or {}).get("steps_per_precision") or {self.policy(): self.cost.steps}

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return from_dict(cls, read_json(path, "a run's result"), where=str(path))

    def write(self, path: Path) -> None:
        """The JSON file, and beside it its rows as CSV (arm, fold, seed and evaluate's columns)."""
        buffer = io.StringIO()
        out = csv.DictWriter(buffer, fieldnames=("arm", "fold", "seed", *COLUMNS))
        out.writeheader()
        out.writerows({"arm": self.arm, "fold": self.fold, "seed": self.seed, **r} for r in self.rows)
        write_text_atomic(Path(path).with_suffix(".csv"), buffer.getvalue())
        write_text_atomic(path, json.dumps(to_dict(self), indent=1, allow_nan=False, default=str))
