"""Case-parallel work in processes, stopped for real when the caller stops.

``verify``, ``preprocess`` and ``evaluate`` each run one independent job per case. A plain
``with ProcessPoolExecutor()`` block waits, on Ctrl-C or SIGTERM, for every case still queued: on
a dataset of hundreds of cases that is minutes of work nobody asked for. :func:`as_finished`
drops the queued jobs as soon as the caller stops reading (an error, an interrupt, a ``break``)
and waits only for the few already running, which write atomically and take seconds each.

Experiment runs, which take minutes to hours, are stopped harder, by terminating their workers:
that is :mod:`glioseg.experiments.executors`' business.
"""
from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable, Iterable, Iterator


def one_thread_per_worker() -> None:
    """Keep each worker to one torch/OpenMP thread, so that n workers use n cores, not n²."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _worker_start(one_thread: bool) -> None:
    """Every worker ignores SIGINT: Ctrl-C reaches the whole process group, and a worker that took
    it would print its own KeyboardInterrupt traceback beside the command's one-line "interrupted".
    The parent stops reading, drops the queued jobs and waits for the running ones (seconds)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if one_thread:
        one_thread_per_worker()


def worker_count(requested: int, jobs: int) -> int:
    """Processes to start for ``jobs`` jobs: ``requested`` (0 or less: one per core), at most one per job."""
    cores = os.cpu_count() or 1
    return max(1, min(requested if requested > 0 else cores, jobs))


def as_finished(fn: Callable, items: Iterable, workers: int, spawn: bool = False,
                one_thread: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(item))`` as each job finishes, in ``workers`` processes.

    An exception raised by ``fn`` is raised here, at its job's turn. When the caller stops
    iterating for any reason, the jobs not yet started are cancelled and the running ones
    are waited for. ``spawn`` starts clean interpreters (needed once torch has started its
    threads); ``one_thread`` applies :func:`one_thread_per_worker` in each worker.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn") if spawn else None,
                               initializer=_worker_start, initargs=(one_thread,))
    try:
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

