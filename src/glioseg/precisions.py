"""The precision vocabulary, and what the machine offers for it.

``PRECISIONS`` names the compute precisions glioseg trains and predicts in, safest first (fallback
walks towards fp32); ``POLICIES`` adds ``auto`` (the training controller, or prediction's window
probe, picks); ``DTYPES`` maps the precisions to torch dtypes. Training (``training.precision``)
and prediction (``inference.precision``) both import them from here.

Whether a low precision is *native* decides whether it can pay off: a CPU without AVX512-BF16 or
AMX emulates bf16 convolutions 2.5-90x slower than fp32, one with them runs a SegResNet training
step at 96³ 1.6x faster than fp32. :func:`native_precisions` and :func:`describe_device` read it
from the machine; nothing in glioseg assumes which CPU it runs on.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
POLICIES = ("auto",) + PRECISIONS
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_flag(name: str) -> bool:
    """A ``torch.cpu._is_*_supported`` flag (absent in older torch builds: False)."""
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def cpu_features() -> dict:
    """What this CPU offers low precision: ATen's vector capability, native bf16 / fp16 units
    (AVX512-BF16 or AMX; AMX-FP16), and the threads torch uses."""
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": _cpu_flag("avx512_bf16") or _cpu_flag("amx_tile"),
        "native_fp16": _cpu_flag("amx_fp16"),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
    }


def _cuda_native_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch versions before the emulation flag
        return torch.cuda.is_bf16_supported()


def native_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions ``device`` computes in hardware, fp32 first.

    CUDA: fp16 always, bf16 where the GPU has it natively. CPU: what :func:`cpu_features` finds.
    Other devices: fp32 only (nothing is assumed).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if _cuda_native_bf16() else ("fp32", "fp16")
    if device.type == "cpu":
        features = cpu_features()
        return ("fp32",) + tuple(p for p in ("bf16", "fp16") if features[f"native_{p}"])
    return ("fp32",)


# auto's preference among the native low precisions: bf16 first (fp32's exponent range: no overflow to inf)
AUTO_PREFERENCE = ("bf16", "fp16")


def auto_levels(device: torch.device | str) -> tuple[str, ...]:
    """The levels ``auto`` may use on ``device``: fp32, then its native low precisions in
    :data:`AUTO_PREFERENCE` order. The one capability rule of every ``auto``: prediction takes the
    first low level (never a timing, so a command's labels are reproducible), training's probe
    times real steps among these levels only, and an experiment does not run a fixed-precision
    arm in a level outside them (it would be emulated, 2.5-90x slower than fp32 on a CPU)."""
    native = native_precisions(device)
    return ("fp32",) + tuple(p for p in AUTO_PREFERENCE if p in native)


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (timing needs it on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def describe_device(device: torch.device | str = "cpu") -> str:
    """One line for logs, reports and the test header, e.g.
    ``cpu: AVX512, native bf16 yes, native fp16 no, 2 threads (2 cores)``."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{device}: {name}, native bf16 {'yes' if _cuda_native_bf16() else 'no'}, native fp16 yes"
    if device.type != "cpu":
        return str(device)
    f = cpu_features()
    yes = {True: "yes", False: "no"}
    return (f"cpu: {f['capability']}, native bf16 {yes[f['native_bf16']]}, native fp16 {yes[f['native_fp16']]}, "
            f"{f['threads']} threads ({f['cores']} cores)")
