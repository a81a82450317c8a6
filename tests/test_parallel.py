"""glioseg.parallel: case-parallel jobs whose queue is dropped when the caller stops."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from glioseg.parallel import as_finished, worker_count


def _slow_mark(path: str) -> str:
    time.sleep(0.3)
    Path(path).touch()
    return path


def _fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("case 3 is bad")
    time.sleep(0.2)
    return value


def test_every_result_comes_back_with_its_index():
    values = [4.0, 9.0, 16.0, 25.0, 36.0]
    found = dict(as_finished(math.sqrt, values, workers=2))
    assert found == {0: 2.0, 1: 3.0, 2: 4.0, 3: 5.0, 4: 6.0}


def test_spawned_workers_run_one_thread_each():
    found = dict(as_finished(os.getenv, ["OMP_NUM_THREADS"] * 2, workers=2, spawn=True, one_thread=True))
    assert found == {0: "1", 1: "1"}


def test_stopping_early_drops_the_queued_jobs(tmp_path):
    paths = [str(tmp_path / f"case{i}") for i in range(12)]
    results = as_finished(_slow_mark, paths, workers=1)
    next(results)
    results.close()  # what a break, an error or Ctrl-C in the caller's loop does
    done = sorted(tmp_path.iterdir())
    # the finished job, the one running, and the two the pool's call queue already held
    # (ProcessPoolExecutor hands workers + 1 jobs ahead); never the other eight
    assert 1 <= len(done) <= 4
    time.sleep(1.0)
    assert sorted(tmp_path.iterdir()) == done, "a cancelled job ran after the stop"


def test_a_failing_job_raises_and_cancels_the_rest():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="case 3 is bad"):
        for _ in as_finished(_fail_on_three, [3] + [0] * 20, workers=1):
            pass
    # 20 queued jobs of 0.2 s would take 4 s to run out
    assert time.perf_counter() - start < 2.5


@pytest.mark.parametrize("requested, jobs, expected", [(3, 10, 3), (8, 2, 2), (5, 0, 1)])
def test_worker_count_is_capped_by_the_jobs(requested, jobs, expected):
    assert worker_count(requested, jobs) == expected


def test_worker_count_zero_means_one_per_core(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert worker_count(0, 100) == 6 and worker_count(-1, 4) == 4


def _sigint_handler(_: int) -> bool:
    import signal

    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("spawn", [False, True])
def test_workers_ignore_ctrl_c_so_only_the_command_reports_it(spawn):
    """#23: Ctrl-C during preprocess --workers 2 sometimes printed worker tracebacks before the
    one-line "interrupted": Ctrl-C reaches every process of the group; the workers leave it to the parent."""
    assert dict(as_finished(_sigint_handler, [0, 1], workers=2, spawn=spawn)) == {0: True, 1: True}


def _foreground_signals() -> None:
    """SIGINT as a terminal's foreground job has it. A suite started in the background by a
    non-interactive shell (``make test &``, some CI runners) ignores SIGINT, the command would
    inherit that, and Python then installs no KeyboardInterrupt handler: the run ends with 0."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_preprocess_with_two_workers_prints_no_worker_traceback(tmp_path):
    import signal
    import subprocess
    import sys

    from glioseg.data.phantom import write_dataset

    write_dataset(tmp_path / "raw", cases=6, seed=0, shape=(64, 64, 48))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    process = subprocess.Popen([sys.executable, "-m", "glioseg", "preprocess", str(tmp_path / "raw"), "--out",
                                str(tmp_path / "cache"), "--workers", "2"], env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_foreground_signals)
    deadline = time.monotonic() + 60
    while not any((tmp_path / "cache").glob("*/.part-*")) and not any((tmp_path / "cache").glob("*/meta.json")):
        assert process.poll() is None and time.monotonic() < deadline, "preprocess never started a case"
        time.sleep(0.02)
    assert process.poll() is None, "preprocess finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)                  # what Ctrl-C in a terminal does
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert process.returncode == 130 and "interrupted" in stderr
