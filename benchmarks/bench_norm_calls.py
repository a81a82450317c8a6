"""What a GroupNorm call costs besides its arithmetic: PyTorch's kernel, glioseg's native form
through its C++ autograd operator and through the Python form of it, and the library call alone.

    PYTHONPATH=src python benchmarks/bench_norm_calls.py [--shape 128x2] [--threads 1] [--calls 2000]

On a tiny tensor (default GroupNorm(8, 128) on 1×128×2³, channels-last, fp32) the arithmetic is a few
microseconds, so the times are the per-call cost that decides the small levels (SegResNet's
128×12³ at a 96³ patch, 0.1-0.2 ms a call). Each row: the forward, and the backward as
``torch.autograd.grad`` of x, γ and β on a kept graph; µs per call, the minimum over 7 rounds of
``--calls`` back-to-back calls (hot: code and data in cache; a call between two layers of a
training step pays more).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from glioseg.models import native_norm  # noqa: E402


def per_call(fn, calls: int, rounds: int = 7) -> float:
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def routes(x, w, b, dy, groups):
    """(forward, backward) closures per route; the native routes only where the library builds."""
    def pair(fn):
        y = fn()
        return fn, lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)
    rows = {"F.group_norm (PyTorch)": pair(lambda: F.group_norm(x, groups, w, b))}
    if not native_norm.available():
        return rows
    op = native_norm._op()
    if op is not None:
        rows["native, C++ operator"] = pair(lambda: op(x, w, b, groups, 1e-5, False))
    rows["native, Python form"] = pair(lambda: native_norm._NativeGroupNormFn.apply(x, w, b, groups, 1e-5, False))
    xd, wd = x.detach(), w.detach()
    y, mean, rstd = native_norm._forward(xd, groups, wd, b.detach())
    forward, backward = native_norm._kernels()
    dx, dw, db = torch.empty_like(xd), torch.empty_like(wd), torch.empty_like(wd)
    n, c, voxels, threads = x.shape[0], x.shape[1], x[0, 0].numel(), torch.get_num_threads()
    bf16 = x.dtype == torch.bfloat16
    rows["library call alone"] = (
        lambda: forward(bf16, xd.data_ptr(), wd.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(),
                        rstd.data_ptr(), n, voxels, c, groups, 1e-5, threads),
        lambda: backward(bf16, dy.data_ptr(), xd.data_ptr(), wd.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                         dx.data_ptr(), dw.data_ptr(), db.data_ptr(), n, voxels, c, groups, threads))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128x2", help="CxS: GroupNorm(8, C) on 1×C×S³")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    channels, size = (int(v) for v in args.shape.split("x"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, size, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    w = torch.randn(channels, generator=generator).requires_grad_()
    b = torch.randn(channels, generator=generator).requires_grad_()
    dy = torch.randn(x.shape, generator=generator).contiguous(memory_format=torch.channels_last_3d)
    print(f"torch {torch.__version__}, GroupNorm(8, {channels}) on 1x{channels}x{size}^3 channels-last fp32, "
          f"{args.threads} thread(s), µs per call (min of 7 rounds of {args.calls})")
    print(f"{'route':26s} {'forward':>8s} {'backward':>9s}")
    for name, (fwd, bwd) in routes(x, w, b, dy, 8).items():
        print(f"{name:26s} {per_call(fwd, args.calls):8.1f} {per_call(bwd, args.calls):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
