"""The report says what its timings were measured on: device, threads and load; several devices are
numbered, the one with most runs first."""
from __future__ import annotations

from glioseg.experiments.report import timing_conditions

from ._results import result


def _run(description, threads, load=None):
    return result("a", 0, 0, precision={"device_description": description} if description else None,
                  threads=threads, load=load)


def test_timing_conditions_count_runs_per_device_and_give_the_load_range():
    runs = [_run("cpu: AVX2, 2 threads", 2), _run("cpu: AVX2, 1 threads", 1, [[1.9, 2.4]]),
            _run("cpu: AVX2, 1 threads", 1, [[2.0, 3.1], [0.5, None]]), _run(None, 4)]
    text = timing_conditions(runs)
    assert text.startswith("Runs timed on [1] cpu: AVX2, 1 threads (2 runs); [2] cpu: AVX2, 2 threads (1 runs); "
                           "[3] cpu, 4 threads (1 runs)")
    assert "load average 0.5-3.1 at the starts and ends of training (not recorded for 2 runs)" in text


def test_runs_without_a_precision_summary_are_counted_by_the_device_they_recorded():
    zen4 = result("a", 0, 0, device_description="cpu: AVX512, native bf16 yes, 1 threads")
    avx2 = result("a", 0, 0, device_description="cpu: AVX2, native bf16 no, 1 threads")
    text = timing_conditions([zen4, avx2, avx2])
    assert text.startswith("Runs timed on [1] cpu: AVX2, native bf16 no, 1 threads (2 runs); "
                           "[2] cpu: AVX512, native bf16 yes, 1 threads (1 runs)")


def test_two_cpus_with_the_same_instruction_sets_are_told_apart_by_their_model():
    """Session 17: folds on a Xeon and on a Zen 4 both read "AVX512, native bf16 yes"; the CPU model
    each attempt recorded keeps their timings apart (a resumed run names both)."""
    line = "cpu: AVX512, native bf16 yes, 2 threads"
    xeon = result("a", 0, 0, device_description=line, cpus=["Intel(R) Xeon(R) Processor"])
    epyc = result("a", 1, 0, device_description=line, cpus=["AMD EPYC", "AMD EPYC"])
    both = result("a", 2, 0, device_description=line, cpus=["Intel(R) Xeon(R) Processor", "AMD EPYC"])
    older = result("a", 0, 1, device_description=line)
    text = timing_conditions([epyc, epyc, xeon, both, older])
    assert text.startswith(f"Runs timed on [1] {line} on AMD EPYC (2 runs); [2] {line} on Intel(R) Xeon(R) "
                           f"Processor (1 runs); [3] {line} on Intel(R) Xeon(R) Processor / AMD EPYC (1 runs); "
                           f"[4] {line} (1 runs)")
