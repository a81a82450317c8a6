"""GroupNorm's compiled pass with narrow rows folded wider, against the same pass unfolded: one table.

    PYTHONPATH=src python benchmarks/bench_norm_fold.py [--shapes 16x96 16x128 32x48] [--threads 1 2]
                                                        [--repeats 5]

:mod:`glioseg.models.compiled_pass` folds rows of fewer bytes than one vector (16 bf16 channels:
SegResNet's first level) into wider ones before its compiled per-channel pass
(:func:`~glioseg.models.compiled_pass.fold_of`). Per shape (GroupNorm(8, C) on 1×C×S³, channels-last),
dtype and thread count: the pass alone and the whole ``compiled`` GroupNorm backward
(``torch.autograd.grad`` of x, weight and bias), each with the fold and with it switched off (fold 1),
interleaved in one process (:func:`glioseg.models.kernel_choice.measure`: min of ``--repeats`` rounds),
and PyTorch's contiguous backward for scale. Needs a working ``torch.compile`` (a C++ compiler).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from glioseg.cpu_allocator import keep_freed_memory  # noqa: E402
from glioseg.models import compiled_pass, fast_norm, kernel_choice  # noqa: E402
from glioseg.precisions import native_precisions  # noqa: E402


def without_fold(run):
    """``run`` with the fold switched off."""
    def call():
        with mock.patch.object(compiled_pass, "fold_of", lambda x: 1):
            return run()
    return call


def runs_of(channels: int, size: int, dtype: torch.dtype) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, size, generator=generator).to(dtype)
    grad = torch.randn(x.shape, generator=generator).to(dtype)
    weight, bias = torch.randn(channels, requires_grad=True), torch.randn(channels, requires_grad=True)
    cl = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    g_cl = grad.contiguous(memory_format=torch.channels_last_3d)
    cf = x.contiguous().requires_grad_()
    y = fast_norm.fast_group_norm(cl, 8, weight, bias, apply="compiled")
    y_cf = F.group_norm(cf, 8, weight, bias)
    coefficients = torch.randn(1, channels, generator=generator)

    def scaled():
        return compiled_pass.scaled_sum_compiled(g_cl, coefficients, cl.detach(), coefficients, coefficients)

    def backward():
        return torch.autograd.grad(y, (cl, weight, bias), g_cl, retain_graph=True)
    return {"pass folded": scaled, "pass unfolded": without_fold(scaled), "bwd folded": backward,
            "bwd unfolded": without_fold(backward),
            "torch cf bwd": lambda: torch.autograd.grad(y_cf, (cf, weight, bias), grad, retain_graph=True)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16x96", "16x128", "32x48"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not compiled_pass.available():
        print("no working torch.compile here: the compiled pass (and its fold) is not used")
        return 1
    keep_freed_memory()
    dtypes = [torch.float32] + ([torch.bfloat16] if "bf16" in native_precisions("cpu") else [])
    print(f"torch {torch.__version__}, min of {args.repeats} interleaved rounds, ms; load average at start "
          f"{os.getloadavg()[0]:.1f}")
    names = ("pass unfolded", "pass folded", "bwd unfolded", "bwd folded", "torch cf bwd")
    print(f"{'shape':>7s} {'dtype':>8s} {'thr':>3s} {'fold':>4s} " + " ".join(f"{n:>13s}" for n in names)
          + f" {'bwd unfolded / folded':>22s}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in args.shapes:
            channels, size = (int(v) for v in shape.split("x"))
            for dtype in dtypes:
                times = kernel_choice.measure(runs_of(channels, size, dtype), args.repeats)
                fold = compiled_pass.fold_of(torch.empty(1, channels, 1, 1, size, dtype=dtype))
                print(f"{shape:>7s} {str(dtype).removeprefix('torch.'):>8s} {threads:>3d} {fold:>4d} "
                      + " ".join(f"{1000 * times[n]:13.2f}" for n in names)
                      + f" {times['bwd unfolded'] / times['bwd folded']:21.2f}x")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
