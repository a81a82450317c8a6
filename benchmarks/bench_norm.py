"""GroupNorm on this CPU: PyTorch's kernel (contiguous and channels-last) next to glioseg's, one table.

    PYTHONPATH=src python benchmarks/bench_norm.py [--shapes 16x96 32x96 32x48 64x24 128x12]
                                                   [--threads 1 2] [--repeats 5]

A shape ``CxS`` is GroupNorm(8, C) on a 1×C×S³ tensor (SegResNet at a 96³ patch: 16×96, 32×48,
64×24, 128×12). Per shape, precision (fp32, and bf16 where the CPU has it natively) and thread
count: the forward and the backward alone (``torch.autograd.grad`` of x, weight and bias on a kept graph) of

- ``torch cf``: ``F.group_norm`` on a contiguous (channels-first) tensor,
- ``torch cl``: the same on a channels-last tensor (SegResNet's layout),
- ``addcmul`` (fp32 only) / ``matmul`` / ``affine`` / ``compiled`` (where this machine can
  compile): :func:`glioseg.models.fast_norm.fast_group_norm` on channels-last, with each form of
  its backward; ``native`` (fp32 / bf16, where the C++ library builds): forward and backward as
  one native call each (:mod:`glioseg.models.native_norm`, through its C++ autograd operator where
  that builds); ``native-bwd``: PyTorch's forward with the native backward,

each the minimum of ``--repeats`` interleaved rounds (all variants once per round, so a change of
load hits all alike), and which one glioseg's measured choice picks (``chosen``). The last column
is the chosen backward over torch's contiguous backward: what channels-last costs with glioseg.
The process runs with :func:`glioseg.cpu_allocator.keep_freed_memory`, as training does (without
it every variant's output pays fresh page faults: ~15 ms per 56 MB tensor on the 2-core Xeon).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from glioseg.cpu_allocator import keep_freed_memory  # noqa: E402
from glioseg.models import fast_norm, kernel_choice  # noqa: E402
from glioseg.precisions import native_precisions  # noqa: E402

VARIANTS = ("torch cf", "torch cl", *fast_norm.APPLY)


def runs_of(channels: int, size: int, dtype: torch.dtype) -> dict[str, tuple]:
    """(forward, backward) closures per variant on fixed random data."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, size, generator=generator).to(dtype)
    grad = torch.randn(x.shape, generator=generator).to(dtype)
    weight, bias = torch.randn(channels, requires_grad=True), torch.randn(channels, requires_grad=True)
    layouts = {"torch cf": torch.contiguous_format, "torch cl": torch.channels_last_3d}
    functions = {"torch cf": F.group_norm, "torch cl": F.group_norm}
    functions.update({kind: (lambda *a, kind=kind: fast_norm.fast_group_norm(*a, apply=kind))
                      for kind in fast_norm.applies(dtype)})
    runs = {}
    for name, fn in functions.items():
        layout = layouts.get(name, torch.channels_last_3d)
        xi = x.contiguous(memory_format=layout).requires_grad_()
        gi = grad.contiguous(memory_format=layout)
        y = fn(xi, 8, weight, bias)
        # autograd.grad: the gradients themselves, no accumulation into .grad (an extra add)
        runs[name] = (lambda fn=fn, xi=xi: fn(xi, 8, weight, bias),
                      lambda y=y, gi=gi, xi=xi: torch.autograd.grad(y, (xi, weight, bias), gi, retain_graph=True))
    return runs


def time_all(runs: dict[str, tuple], repeats: int) -> dict[str, tuple[float, float]]:
    forward = kernel_choice.measure({k: v[0] for k, v in runs.items()}, repeats)
    backward = kernel_choice.measure({k: v[1] for k, v in runs.items()}, repeats)
    return {k: (forward[k], backward[k]) for k in runs}


def chosen(channels: int, size: int, dtype: torch.dtype) -> str:
    kernel_choice.forget()
    x = torch.randn(1, channels, size, size, size).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    fast_norm.group_norm(x.requires_grad_(), 8, torch.ones(channels, requires_grad=True), torch.zeros(channels))
    return next(iter(kernel_choice.decisions().values()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16x96", "32x96", "32x48", "64x24", "128x12"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    keep_freed_memory()      # as glioseg train does: every variant's fresh tensors reuse freed pages
    dtypes = [torch.float32] + ([torch.bfloat16] if "bf16" in native_precisions("cpu") else [])
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, min of {args.repeats} "
          f"interleaved rounds, ms; load average at start {os.getloadavg()[0]:.1f}")
    head = (f"{'shape':>7s} {'dtype':>8s} {'thr':>3s} " + " ".join(f"{v + ' f/b':>15s}" for v in VARIANTS)
            + f" {'chosen':>8s} {'chosen bwd / torch cf bwd':>26s}")
    print(head)
    print("-" * len(head))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in args.shapes:
            channels, size = (int(v) for v in shape.split("x"))
            for dtype in dtypes:
                times = time_all(runs_of(channels, size, dtype), args.repeats)
                pick = chosen(channels, size, dtype)
                pick_bwd = times["torch cl" if pick == "torch" else pick][1]
                cells = " ".join(f"{1000 * times[v][0]:7.2f}/{1000 * times[v][1]:7.2f}" if v in times
                                 else f"{'-':>15s}" for v in VARIANTS)
                print(f"{shape:>7s} {str(dtype).removeprefix('torch.'):>8s} {threads:>3d} {cells} {pick:>8s} "
                      f"{pick_bwd / times['torch cf'][1]:25.2f}x")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
