"""Speed and memory of every registered network on this CPU: a table, one row per model and patch.

    PYTHONPATH=src python benchmarks/bench_models.py [--models segresnet dalight3d] [--sizes 64 96]
                                                     [--repeats 5] [--threads 2] [--json out.json]

Per (model, patch): parameters, FLOPs of one forward pass (2 per multiply-add), forward time
(eval, no_grad), training-step time (train mode, forward + backward of the sigmoid Dice loss on a
random target, batch 1, fp32), each the median of ``--repeats`` runs after one warm-up, and peak memory above the
baseline for inference and for the training step.

Kernels (``--kernels``): ``torch`` runs the network as the registry builds it (nn.Conv3d on aten's
own backend choice); ``glioseg`` applies :func:`glioseg.models.cpu_conv.accelerate_cpu_convs`, as
``glioseg train`` and ``glioseg predict`` do on a CPU.

Memory: every (model, patch) runs in its own subprocess. Before the first forward the worker
records its resident set (VmRSS, with the model and input already allocated); ``ru_maxrss`` after
the inference runs, and again after the training runs, minus that baseline gives the peak extra
memory of each (ru_maxrss only grows, so inference is measured first). tracemalloc cannot see
torch's allocations, and a shared process would carry the previous model's peak.

bf16 (autocast) rows are added only when the CPU has native bf16 (avx512_bf16 or amx_bf16 in
/proc/cpuinfo): elsewhere bf16 is emulated (SegResNet 64³ training steps 2.5x slower than fp32 on an
AVX-512 Xeon without BF16, bf16 convolutions ~90x slower on AVX2).

Timings are wall-clock: on a machine shared with other jobs they are inflated; the load average at
start and end is printed so a noisy table can be recognised.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

SRC = Path(__file__).resolve().parents[1] / "src"


def has_native_bf16() -> bool:
    from glioseg.precisions import native_precisions

    return "bf16" in native_precisions("cpu")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("VmRSS not found in /proc/self/status")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def median_time(fn, repeats: int) -> float:
    fn()                                                               # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, size: int, repeats: int, threads: int, dtype: str, kernels: str) -> dict:
    """Worker: all numbers for one (model, patch, dtype), in this process."""
    import torch

    from glioseg.models import count_parameters, create, describe
    from glioseg.models.cpu_conv import accelerate_cpu_convs
    from glioseg.training.losses import SegmentationLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create(name)
    if kernels == "glioseg":
        accelerate_cpu_convs(model)
    x = torch.randn(1, 4, size, size, size)
    # the segresnet-brats loss on a fixed random target, as a training step computes it
    target = (torch.rand(1, 3, size, size, size) > 0.7).float()
    loss_fn = SegmentationLoss("dice")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    base = rss_mib()

    def forward():
        with torch.no_grad(), autocast:
            model(x)

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast:
            y = model(x)
        loss_fn(y, target).backward()

    model.eval()
    fwd = median_time(forward, repeats)
    peak_fwd = peak_mib() - base
    model.train()
    step = median_time(train_step, repeats)
    peak_step = peak_mib() - base
    return {"model": name, "size": size, "dtype": dtype, "kernels": kernels, "params": count_parameters(model),
            "flops": describe(name, (size, size, size))["flops"], "forward_s": fwd,
            "train_step_s": step, "peak_forward_mib": peak_fwd, "peak_train_mib": peak_step}


def run_worker(name: str, size: int, args, dtype: str, kernels: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, str(size), dtype, kernels,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} at {size}^3 ({dtype}, {kernels} kernels) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':22s} {'patch':>6s} {'dtype':>5s} {'kernels':>7s} {'params':>10s} {'GFLOP':>7s} {'fwd s':>7s} "
            f"{'step s':>7s} {'GFLOP/s':>8s} {'fwd MiB':>8s} {'step MiB':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        # a training step is ~3 forward passes of FLOPs (forward, input grad, weight grad)
        rate = 3 * r["flops"] / 1e9 / r["train_step_s"]
        print(f"{r['model']:22s} {r['size']:>4d}^3 {r['dtype']:>5s} {r['kernels']:>7s} {r['params']:>10,d} "
              f"{r['flops'] / 1e9:7.1f} {r['forward_s']:7.2f} {r['train_step_s']:7.2f} {rate:8.1f} "
              f"{r['peak_forward_mib']:8.0f} {r['peak_train_mib']:9.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="default: every registered network")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96], help="cubic patch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", nargs="+", choices=["torch", "glioseg"], default=["torch", "glioseg"],
                        help="conv kernels: torch's own, or glioseg's CPU kernels (as train/predict use)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "SIZE", "DTYPE", "KERNELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.worker:
        name, size, dtype, kernels = args.worker
        print(json.dumps(measure(name, int(size), args.repeats, args.threads, dtype, kernels)))
        return 0

    sys.path.insert(0, str(SRC))
    import torch

    from glioseg.models import list_models

    models = args.models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(list_models())}")
    dtypes = ["fp32", "bf16"] if has_native_bf16() else ["fp32"]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, median of {args.repeats} after 1 warm-up, batch 1, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    if "bf16" not in dtypes:
        print("bf16: skipped (no avx512_bf16/amx_bf16 on this CPU: bf16 is emulated, slower than fp32)")
    jobs = [(m, s, d, k) for s in args.sizes for m in models for d in dtypes for k in args.kernels]
    rows = [run_worker(m, s, args, d, k) for m, s, d, k in tqdm(jobs, desc="benchmark", unit="run")]
    print_table(rows)
    print(f"load average at end {os.getloadavg()[0]:.1f} (>{args.threads} means other jobs shared the CPU)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
