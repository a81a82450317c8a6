"""One run of an experiment as an independent job: train (or resume), predict, score, write results.

A job is a plain dict (it crosses process and Slurm boundaries by pickling) made by
:func:`make_job`; :func:`run_job` does whatever the run still needs and is safe to call again
after any interruption: a finished run is not trained again, an interrupted one continues with
the trainer's exact resume, and prediction skips cases already written. The result file
(``DIR/results/<arm>/fold<k>-seed<s>.json`` and a per-case ``.csv`` beside it) is written last,
atomically, and holds no weights, so it can be committed.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from glioseg.config import to_dict
from glioseg.data.sources import as_paths, discover_all
from glioseg.errors import InputError
from glioseg.evaluation.evaluate import prediction_path, score_all
from glioseg.experiments.measure import StepTimer, load_average, machine, peak_mib, reset_peak
from glioseg.experiments.plan import Plan, Run, is_trained
from glioseg.experiments.records import Job, RunCost, RunResult
from glioseg.files import write_text_atomic
from glioseg.inference import inputs as case_inputs
from glioseg.inference.bundle import load_bundle
from glioseg.inference.pipeline import make_predictor, predict_all
from glioseg.inference.predictor import PredictConfig
from glioseg.models.registry import describe
from glioseg.precisions import describe_device
from glioseg.run_io import CURVE_COLUMNS, RunFiles
from glioseg.training.callbacks import RunStopped
from glioseg.training.distributed import DistInfo, pick_device
from glioseg.training.recipe import TrainConfig
from glioseg.training.settings import trained_differences
from glioseg.training.trainer import train

log = logging.getLogger(__name__)


def make_job(plan: Plan, run: Run, threads: int | None = None) -> Job:
    budget, spec = plan.resolved.budget, plan.spec
    return Job(arm=run.arm, fold=run.fold, seed=run.seed, run_dir=str(plan.run_dir(run)),
               result=str(plan.result_path(run)), cache=str(plan.cache),
               data=tuple(str(p) for p in spec.data_paths()) if spec.several else str(spec.data_path()),
               config=to_dict(plan.resolved.config(run.arm, run.seed)), split=plan.split(run),
               evaluation=spec.evaluation, eval_device=budget.eval_device, minutes=budget.minutes,
               threads=threads)


def _continued_config(run_dir: Path, config: TrainConfig) -> TrainConfig:
    """The settings a started run goes on with: its own. A run folder started with other settings
    (an edited spec) must not be continued; settings it predates stay as it trained."""
    files = RunFiles(run_dir)
    before, changed = trained_differences(files.read_config(), config, str(files.config))
    if changed:
        raise InputError(f"{run_dir}: this run was started with other settings ({', '.join(changed)}); "
                         "continue the experiment with its own spec, or use another --out")
    return before


def _train(job: Job, run_dir: Path, config: TrainConfig) -> None:
    """Train or resume the run; records wall time and peak memory of this attempt (an attempt
    killed outright records nothing: its steps are redone and timed by the next)."""
    if is_trained(run_dir):
        return
    files = RunFiles(run_dir)
    resume = files.started()
    if resume:
        config = _continued_config(run_dir, config)
    else:
        write_text_atomic(files.split, json.dumps(job.split, indent=2))
    device = pick_device(config.device, DistInfo())
    measure = reset_peak(device)
    started, load = time.perf_counter(), load_average()
    try:
        train(config, Path(job.cache), run_dir, resume=resume, callbacks=[StepTimer(run_dir, job.minutes)])
    except RunStopped:
        log.info("%s: the budget's %s minutes are spent", run_dir, job.minutes)
    finally:
        _add_cost(run_dir, time.perf_counter() - started, peak_mib(device), measure, (load, load_average()))


def _add_cost(run_dir: Path, wall: float, peak: float, measure: str, load: tuple) -> None:
    """Wall time and peak memory summed over attempts; the load average at each attempt's start and
    end (timings taken beside other work are slower, and the report says so)."""
    files = RunFiles(run_dir)
    cost = files.read_cost() or {"wall_s": 0.0, "peak_mib": 0.0, "attempts": 0}
    cost = {"wall_s": round(cost["wall_s"] + wall, 3), "peak_mib": round(max(cost["peak_mib"], peak), 1),
            "attempts": cost["attempts"] + 1, "peak_measure": measure,
            "load": cost.get("load", []) + [list(load)],
            # the CPU model of each attempt: a run resumed on another machine was timed on both
            "cpus": cost.get("cpus", []) + [machine()["cpu"]]}
    write_text_atomic(files.cost, json.dumps(cost, indent=2))


def score_checkpoint(checkpoint: Path, test: set[str], data, pred_dir: Path, window: str,
                     device: str) -> tuple[list[dict], float]:
    """Held-out cases of ``data`` (a dataset path, or several) through the predict pipeline into
    ``pred_dir``, scored like ``glioseg evaluate``, each dataset's cases predicted and scored in its own
    label convention; (rows, seconds per case). Cases already predicted there are not predicted again."""
    predictor = make_predictor([checkpoint], PredictConfig(window=window, device=device))
    paths = as_paths(data)
    items = [i for path in paths for i in case_inputs.from_path(path, predictor.bundle.channels, None)
             if i.case.case_id in test]
    started = time.perf_counter()
    predict_all(items, predictor, pred_dir)
    seconds = (time.perf_counter() - started) / max(1, len(items))
    jobs = [(c.case_id, prediction_path(pred_dir, c.case_id), c.label, dataset.scheme.name)
            for dataset in discover_all(paths).datasets for c in dataset.cases if c.case_id in test]
    rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
            for r in score_all(jobs)]   # NaN (sensitivity of an empty reference) is JSON null
    return rows, seconds


def _evaluate(job: Job, run_dir: Path) -> tuple[list[dict], str, float]:
    """Held-out cases through the predict pipeline, scored; (rows, checkpoint used, s per case)."""
    files = RunFiles(run_dir)
    wanted = job.evaluation.checkpoint
    checkpoint = files.checkpoint(wanted)
    if not checkpoint.is_file():
        checkpoint, wanted = files.last, "last"   # no validation ran, so no best.pt: the trained state
    rows, seconds = score_checkpoint(checkpoint, set(job.split["test"]), job.data, run_dir / "predictions",
                                     job.evaluation.window, job.eval_device)
    return rows, wanted, seconds


def _cost(run_dir: Path, config: TrainConfig, checkpoint: str, eval_s: float) -> RunCost:
    files = RunFiles(run_dir)
    bundle = load_bundle(files.checkpoint(checkpoint))
    device = pick_device(config.device, DistInfo())
    model = describe(bundle.model, tuple(config.patch), bundle.in_channels, bundle.out_channels, **bundle.options)
    times = [t for _, t in files.read_step_times()]
    cost = files.read_cost() or {}
    return RunCost(params=model["params"], flops=model["flops"], patch=tuple(config.patch), steps=len(times),
                   s_per_step=statistics.median(times) if times else None,
                   train_step_seconds=round(sum(times), 3), train_wall_s=cost.get("wall_s"),
                   peak_mib=cost.get("peak_mib"), peak_measure=cost.get("peak_measure"),
                   eval_s_per_case=round(eval_s, 3), device=str(device), threads=torch.get_num_threads(),
                   device_description=describe_device(device), load=cost.get("load"), cpus=cost.get("cpus"))


def _curve(run_dir: Path) -> list[dict]:
    files = RunFiles(run_dir)
    rows = files.read_metrics() if files.metrics.is_file() else []
    return [{k: (r[k] if r[k] == r[k] else None) if k != "precision" else r[k] for k in CURVE_COLUMNS} for r in rows]


def run_job(job: Job) -> RunResult:
    """Whatever the run still needs; returns its result (the content of the result file)."""
    result_path = Path(job.result)
    if result_path.is_file():
        return RunResult.read(result_path)
    if job.threads:
        torch.set_num_threads(job.threads)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = job.train_config()
    _train(job, run_dir, config)
    rows, checkpoint, eval_s = _evaluate(job, run_dir)
    files = RunFiles(run_dir)
    result = RunResult(arm=job.arm, fold=job.fold, seed=job.seed, model=config.model, checkpoint=checkpoint,
                       test_cases=tuple(job.split["test"]), rows=tuple(rows),
                       cost=_cost(run_dir, config, checkpoint, eval_s), curve=tuple(_curve(run_dir)),
                       precision=files.read_summary(), budget_stop=files.read_budget_stop(), config=job.config)
    result.write(result_path)
    log.info("%s: done (%d held-out cases)", result_path, len(job.split["test"]))
    return result
