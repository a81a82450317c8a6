"""What a run costs: seconds per optimiser step, training time, peak memory; the minutes budget.

The trainer's own logs stay as they are (an exact resume compares them bit for bit), so the
experiment times each step with a trainer callback (:class:`StepTimer`). Each step's seconds are
appended to the run folder's ``step_times.csv`` as it ends; a resumed run drops the rows after the
step it resumes from, so the file always describes the steps of the trajectory that was kept, and
a ``minutes`` budget counts exactly those: once spent, the callback stops the run (the trainer
checkpoints it) and records where in ``budget_stop.json``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on Linux the process's
peak resident set (``VmHWM``), reset at the start of the run through ``/proc/self/clear_refs``
so that runs sharing a process are measured apart; elsewhere ``ru_maxrss``, the process's peak.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import torch

from glioseg.files import write_text_atomic
from glioseg.run_io import RunFiles
from glioseg.training.callbacks import Callback, StepEnd, TrainEnd



BUDGET_REASON = "the budget's minutes are spent"


class StepTimer(Callback):
    """Times every optimiser step of a run into ``step_times.csv``; stops it after ``minutes`` of steps."""

    def __init__(self, run_dir: Path, minutes: float | None = None):
        self.files, self.minutes, self.spent = RunFiles(run_dir), minutes, 0.0

    def on_train_start(self, trainer) -> None:
        self.spent = self.files.keep_step_times_until(trainer.step)   # trainer.step: where it resumes

    def on_step_end(self, trainer, step: StepEnd) -> None:
        self.spent += step.seconds
        self.files.append_step_time(step.step, step.seconds)
        if self.minutes is not None and self.spent >= 60.0 * self.minutes:
            trainer.request_stop(BUDGET_REASON)

    def on_train_end(self, trainer, end: TrainEnd) -> None:
        if end.stopped == BUDGET_REASON:
            write_text_atomic(self.files.budget_stop, json.dumps(
                {"step": trainer.step, "epoch": trainer.epoch, "seconds": round(self.spent, 3)}))


def _proc_status(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0   # kB → MiB
    except OSError:
        return None
    return None


def reset_peak(device: torch.device) -> str:
    """Start a fresh peak-memory measurement; returns what will be measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        if _proc_status("VmHWM") is not None:
            return "peak resident set of the run (VmHWM, reset at its start)"
    except OSError:
        pass
    return "peak resident set of the process (ru_maxrss; may include earlier runs of this process)"


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform == "darwin" else 1.0)
    return kib / 1024.0   # ru_maxrss: bytes on macOS, kB on Linux


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def threads_for(jobs: int) -> int:
    """Torch threads per run when ``jobs`` runs share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def machine() -> dict:
    """The CPU (model name, cores), the GPU if any, and torch's thread count: for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        # a blank model name (possible under a hypervisor) leaves the platform's name, never ""
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch_threads": torch.get_num_threads(),
            "torch": str(torch.__version__)}
