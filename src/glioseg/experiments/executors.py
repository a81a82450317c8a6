"""Where the runs execute: this machine (``local``, ``--jobs N`` processes) or a cluster (``slurm``).

Every run is an independent job (:func:`glioseg.experiments.job.run_job`), so the executors only
hand jobs out and collect failures: a failing run does not stop the others, and all failures
are raised together at the end (a re-run of the same command retries them and skips the rest).

``local`` with one job runs the jobs one after another in this process; with N jobs, in N
worker processes (each with its share of the cores as torch threads, one fresh process per
run). Stopping the command stops its runs: an interrupted or terminated parent terminates its
workers, and a worker whose parent was killed outright stops by itself, so no run trains on
unseen beside the next attempt; every run continues from its last checkpoint when the same
command runs again. ``slurm`` submits a job array through submitit (``pip install glioseg[experiment]``),
which also runs on submitit's local executor (``slurm.cluster: local`` in the spec).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from glioseg.errors import GliosegError
from glioseg.experiments.job import run_job
from glioseg.experiments.records import Job, RunResult
from glioseg.experiments.spec import SlurmSpec

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")


class RunsFailed(GliosegError):
    """Some runs failed; the others finished, and a re-run of the command retries these."""


def _raise_failures(failures: list[str], total: int) -> None:
    if failures:
        raise RunsFailed(f"{len(failures)} of {total} runs failed (the others are done; run the same "
                         "command again to retry):\n  " + "\n  ".join(failures))


def _stop_with(parent: int) -> None:
    """Worker initializer: exit as soon as the parent process is gone (killed outright, so it could
    not terminate its workers)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="glioseg-parent-watch", daemon=True).start()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers and drop the runs not started (their runs resume next time)."""
    for child in multiprocessing.active_children():
        child.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def run_local(jobs: list[Job], workers: int = 1, job_fn: Callable[[Job], RunResult] = run_job) -> None:
    failures = []
    if workers <= 1:
        for n, job in enumerate(jobs, start=1):
            log.info("run %d of %d: %s", n, len(jobs), job.name)
            try:
                job_fn(job)
            except (ValueError, OSError, GliosegError) as exc:
                failures.append(f"{job.name}: {exc}")
                log.error("%s", failures[-1])
        _raise_failures(failures, len(jobs))
        return
    # spawn: a fork of a process with torch threads running can deadlock; one process per run,
    # so that each run's peak memory is its own
    context = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_stop_with, initargs=(os.getpid(),),
                               **fresh)
    try:
        futures = {pool.submit(job_fn, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                future.result()
                log.info("finished %s", _name(futures[future]))
            except Exception as exc:   # a worker's error of any kind is that run's failure
                failures.append(f"{_name(futures[future])}: {exc}")
                log.error("%s", failures[-1])
    except BaseException:   # interrupted or terminated: the workers stop with this process
        _stop_workers(pool)
        raise
    pool.shutdown()
    _raise_failures(failures, len(jobs))


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise GliosegError("--executor slurm needs submitit: pip install 'glioseg[experiment]'") from exc
    return submitit


def slurm_executor(folder: Path, slurm: SlurmSpec):
    """A submitit executor for ``slurm`` (or the cluster it names, e.g. ``local``)."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=slurm.cluster)
    params = {"timeout_min": slurm.timeout_min, "gpus_per_node": slurm.gpus_per_node,
              "cpus_per_task": slurm.cpus_per_task, "mem_gb": slurm.mem_gb, **slurm.extra}
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    executor.update_parameters(name="glioseg-experiment", **params)
    return executor


def run_slurm(jobs: list[Job], folder: Path, slurm: SlurmSpec) -> None:
    """Submit every job as one array and wait for them (submitit's logs are in ``folder``)."""
    if not jobs:
        return
    executor = slurm_executor(folder, slurm)
    submitted = executor.map_array(run_job, jobs)
    log.info("submitted %d runs to %s (job %s); logs in %s", len(jobs), slurm.cluster,
             submitted[0].job_id.split("_")[0], folder)
    failures = []
    for job, handle in zip(jobs, submitted):
        try:
            handle.result()
        except Exception as exc:   # submitit re-raises the job's error wrapped; that run failed
            failures.append(f"{job.name}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
            log.error("%s", failures[-1])
    _raise_failures(failures, len(jobs))
