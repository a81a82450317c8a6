"""Result records for the experiment tests that need finished runs without training them (``config``:
the run's settings, by default a minimal fp32 SegResNet's; :func:`plan_result` takes its plan's)."""
from __future__ import annotations

from glioseg.config import to_dict
from glioseg.evaluation.evaluate import COLUMNS
from glioseg.experiments.records import RunCost, RunResult

CONFIG = {"model": "segresnet", "precision": {"policy": "fp32"}}


def cost(**fields) -> RunCost:
    """A run's cost: CPU, one thread, nothing measured unless given."""
    base = dict(params=1000, flops=10**9, patch=(16, 16, 16), steps=0, s_per_step=None, train_step_seconds=0.0,
                train_wall_s=None, peak_mib=None, peak_measure=None, eval_s_per_case=0.0, device="cpu", threads=1)
    return RunCost(**{**base, **fields})


def result(arm: str, fold: int, seed: int, rows: list[dict] = (), *, precision: dict | None = None,
           config: dict | None = None, **cost_fields) -> RunResult:
    """A finished run scoring ``rows`` (the columns they lack are None: not measured; NaN is None,
    as the job writes an undefined value)."""
    rows = tuple({c: None if row.get(c) != row.get(c) else row.get(c) for c in COLUMNS} for row in rows)
    cases = tuple(dict.fromkeys(r["case"] for r in rows))
    return RunResult(arm=arm, fold=fold, seed=seed, model="segresnet", checkpoint="best", test_cases=cases,
                     rows=rows, cost=cost(**cost_fields), curve=(), precision=precision, budget_stop=None,
                     config=config or CONFIG)


def plan_result(plan, run, rows: list[dict] = (), **fields) -> RunResult:
    """A result of one of ``plan``'s runs, trained with the settings the plan resolves for it."""
    return result(run.arm, run.fold, run.seed, rows, config=to_dict(plan.resolved.config(run.arm, run.seed)), **fields)
