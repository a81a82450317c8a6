"""Speed and memory of every registered network on this CPU: a table, one row per model and patch.

    PYTHONPATH=src python benchmarks/bench_models.py [--models segresnet dalight3d] [--sizes 64 96]
                                                     [--repeats 5] [--rounds 3] [--threads 2] [--json out.json]

Per (model, patch): parameters, FLOPs of one forward pass (2 per multiply-add), forward time
(eval, no_grad), training-step time (train mode, forward + backward of the sigmoid Dice loss on a
random target, batch 1, fp32), each the median of ``--repeats`` runs after one warm-up, and peak memory above the
baseline for inference and for the training step.

Kernels (``--kernels``): ``torch`` runs the network as the registry builds it (nn.Conv3d and
GroupNorm on aten's own kernels); ``glioseg`` applies :func:`glioseg.models.cpu_kernels.accelerate_cpu`
(convolutions, GroupNorm chosen by measurement) and :func:`glioseg.cpu_allocator.keep_freed_memory`,
as ``glioseg train`` and ``glioseg predict`` do on a CPU; ``eager`` is the same without the
Inductor-compiled GroupNorm pass and the native GroupNorm (``GLIOSEG_COMPILE=0``: glioseg on a
machine without a C++ compiler); ``convs`` only glioseg's convolutions. Each (model, patch, precision) runs
``--rounds`` rounds, each round one process per kernel set back to back, in alternating order, so
that a change of load between processes hits both: the speed ratio is computed per round and
printed as its median with the range over rounds.

Peak: before the networks, one process measures this machine's attainable GFLOP/s per precision (a
4096³ GEMM and a 64→64 3³ convolution on 64³ through oneDNN, best of 3); each step's GFLOP/s
(3 forward passes of FLOPs) is printed as a fraction of the larger.

Memory: every (model, patch) runs in its own subprocess. Before the first forward the worker
records its resident set (VmRSS, with the model and input already allocated); ``ru_maxrss`` after
the inference runs, and again after the training runs, minus that baseline gives the peak extra
memory of each (ru_maxrss only grows, so inference is measured first). tracemalloc cannot see
torch's allocations, and a shared process would carry the previous model's peak.

bf16 (autocast) rows are added only when the CPU has native bf16 (avx512_bf16 or amx_bf16 in
/proc/cpuinfo): elsewhere bf16 is emulated (SegResNet 64³ training steps 2.5x slower than fp32 on an
AVX-512 Xeon without BF16, bf16 convolutions ~90x slower on AVX2).

An older instruction set can be emulated on a newer CPU for both PyTorch and oneDNN with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (what an AVX2-only EPYC runs, at this CPU's
clock and memory); pass ``--dtypes fp32`` then, bf16 being emulated there.

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
KERNELS = ("torch", "convs", "eager", "glioseg")


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
    """Worker: all numbers for one (model, patch, dtype, kernels), in this process."""
    import torch

    from glioseg.cpu_allocator import keep_freed_memory
    from glioseg.models import count_parameters, create, describe
    from glioseg.models.cpu_conv import accelerate_cpu_convs
    from glioseg.models.cpu_kernels import accelerate_cpu
    from glioseg.training.losses import SegmentationLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create(name)
    if kernels in ("eager", "glioseg"):
        if kernels == "eager":
            os.environ["GLIOSEG_COMPILE"] = "0"
        keep_freed_memory()              # as glioseg train and predict do on a CPU
        accelerate_cpu(model)
    else:
        os.environ["GLIOSEG_KERNELS"] = "torch"   # DALight-3D's norms call the dispatcher directly
        if kernels == "convs":
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
    train_step()                          # glioseg's kernel choice is measured in the first step
    step = median_time(train_step, repeats)
    peak_step = peak_mib() - base
    return {"model": name, "size": size, "dtype": dtype, "kernels": kernels, "params": count_parameters(model),
            "flops": describe(name, (size, size, size))["flops"], "forward_s": fwd,
            "train_step_s": step, "peak_forward_mib": peak_fwd, "peak_train_mib": peak_step}


def peak_rates(threads: int, dtype: str) -> dict:
    """Worker: this machine's attainable GFLOP/s in ``dtype``: a 4096³ GEMM and a 64→64 3³
    convolution on a channels-last 1×64×64³ tensor through oneDNN, best of 3 after a warm-up."""
    import torch

    torch.set_num_threads(threads)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(4096, 4096, dtype=torch_dtype), torch.randn(4096, 4096, dtype=torch_dtype)
    x = torch.randn(1, 64, 64, 64, 64, dtype=torch_dtype).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(64, 64, 3, 3, 3, dtype=torch_dtype)
    work = {"gemm": (lambda: a @ b, 2 * 4096 ** 3),
            "conv3": (lambda: torch.nn.functional.conv3d(x, w, padding=1), 2 * 64 * 64 * 27 * 64 ** 3)}
    rates = {}
    for kind, (run, flops) in work.items():
        run()
        best = min(timed_once(run) for _ in range(3))
        rates[kind] = flops / best / 1e9
    return {"dtype": dtype, **rates}


def timed_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_worker(args_list: list[str], args) -> dict:
    cmd = [sys.executable, __file__, *args_list, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env.pop("GLIOSEG_KERNELS", None)
    env.pop("GLIOSEG_COMPILE", None)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args_list)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def summarise(rows: list[dict], peaks: dict[str, float]) -> list[dict]:
    """One line per (model, patch, dtype): medians over rounds of each kernel set, the per-round
    speed ratio glioseg / torch (a round ran both back to back) and the step against the peak."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["size"], r["dtype"]), []).append(r)
    lines = []
    for (model, size, dtype), group in groups.items():
        by_kernels = {k: [r for r in group if r["kernels"] == k] for k in KERNELS}
        line = {"model": model, "size": size, "dtype": dtype, "flops": group[0]["flops"], "params": group[0]["params"]}
        for kernels, runs in by_kernels.items():
            if runs:
                line[f"{kernels}_step_s"] = statistics.median(r["train_step_s"] for r in runs)
                line[f"{kernels}_forward_s"] = statistics.median(r["forward_s"] for r in runs)
                line[f"{kernels}_peak_train_mib"] = max(r["peak_train_mib"] for r in runs)
        for other in KERNELS[1:]:
            if by_kernels["torch"] and by_kernels[other]:
                line[f"{other}_ratios"] = [t["train_step_s"] / g["train_step_s"]
                                           for t, g in zip(by_kernels["torch"], by_kernels[other])]
        best = next(line[f"{k}_step_s"] for k in reversed(KERNELS) if f"{k}_step_s" in line)
        # a training step is ~3 forward passes of FLOPs (forward, input grad, weight grad)
        line["gflops"] = 3 * line["flops"] / 1e9 / best
        line["peak_fraction"] = line["gflops"] / peaks[dtype] if dtype in peaks else None
        lines.append(line)
    return lines


def print_table(lines: list[dict]) -> None:
    head = (f"{'model':10s} {'patch':>6s} {'dtype':>5s} {'GFLOP':>6s} "
            + " ".join(f"{k + ' s':>9s}" for k in KERNELS) + " "
            + " ".join(f"{k + '/torch':>19s}" for k in KERNELS[1:])
            + f" {'fwd s':>6s} {'GFLOP/s':>8s} {'of peak':>8s} {'step MiB':>9s}")
    print(head)
    print("-" * len(head))
    for l in lines:
        ratios = [spread(l[f"{k}_ratios"]) if f"{k}_ratios" in l else "-" for k in KERNELS[1:]]
        fraction = f"{100 * l['peak_fraction']:.0f} %" if l["peak_fraction"] is not None else "-"
        kernels = next(k for k in reversed(KERNELS) if f"{k}_step_s" in l)
        steps = [f"{l[f'{k}_step_s']:.2f}" if f"{k}_step_s" in l else "-" for k in KERNELS]
        print(f"{l['model']:10s} {l['size']:>4d}^3 {l['dtype']:>5s} {l['flops'] / 1e9:6.1f} "
              + " ".join(f"{v:>9s}" for v in steps) + " " + " ".join(f"{v:>19s}" for v in ratios) + " "
              f"{l[kernels + '_forward_s']:6.2f} {l['gflops']:8.1f} {fraction:>8s} {l[kernels + '_peak_train_mib']:9.0f}")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def jobs_of(models, sizes, dtypes, kernels, rounds) -> list[tuple]:
    """Every (model, size, dtype, kernels) run, interleaved: each round runs every kernel set of a
    row back to back, in alternating order (A B, B A, ...), so a change of load hits both alike."""
    jobs = []
    for size in sizes:
        for model in models:
            for dtype in dtypes:
                for round_ in range(rounds):
                    order = kernels if round_ % 2 == 0 else list(reversed(kernels))
                    jobs += [(model, size, dtype, k) for k in order]
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="default: every registered network")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 96], help="cubic patch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (median)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of torch / glioseg per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=["torch", "glioseg"],
                        help="torch's own kernels; glioseg's convolutions only (glioseg before its GroupNorm); "
                             "glioseg's CPU kernels and allocator (as train/predict use)")
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"],
                        help="precisions to run (default: fp32, and bf16 where the CPU has it natively)")
    parser.add_argument("--no-peak", action="store_true", help="skip measuring the machine's GEMM / conv peak")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary here")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "SIZE", "DTYPE", "KERNELS"), help=argparse.SUPPRESS)
    parser.add_argument("--peak-worker", metavar="DTYPE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")
    if args.worker:
        name, size, dtype, kernels = args.worker
        print(json.dumps(measure(name, int(size), args.repeats, args.threads, dtype, kernels)))
        return 0
    if args.peak_worker:
        print(json.dumps(peak_rates(args.threads, args.peak_worker)))
        return 0

    sys.path.insert(0, str(SRC))
    import torch

    from glioseg.models import list_models

    models = args.models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(list_models())}")
    dtypes = args.dtypes or (["fp32", "bf16"] if has_native_bf16() else ["fp32"])
    print(f"{cpu_name()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, median of {args.repeats} steps after 1 warm-up, {args.rounds} interleaved "
          f"rounds, batch 1, load average at start {os.getloadavg()[0]:.1f}")
    if "bf16" not in dtypes:
        print("bf16: skipped (no avx512_bf16/amx_bf16 on this CPU: bf16 is emulated, slower than fp32)")
    peaks = {}
    if not args.no_peak:
        for dtype in dtypes:
            rates = run_worker(["--peak-worker", dtype], args)
            peaks[dtype] = max(rates["gemm"], rates["conv3"])
            print(f"peak {dtype}: GEMM 4096^3 {rates['gemm']:.0f} GFLOP/s, conv 3^3 64->64 at 64^3 "
                  f"{rates['conv3']:.0f} GFLOP/s (the larger is 100 %)")
    jobs = jobs_of(models, args.sizes, dtypes, args.kernels, args.rounds)
    rows = [run_worker(["--worker", m, str(s), d, k], args)
            for m, s, d, k in tqdm(jobs, desc="benchmark", unit="run")]
    lines = summarise(rows, peaks)
    print_table(lines)
    print("X/torch: torch's step time over X's, per round (a round runs each kernel set back to back); "
          "median [min-max] over rounds. GFLOP/s and peak: of the last kernel set listed")
    print(f"load average at end {os.getloadavg()[0]:.1f} (>{args.threads} means other jobs shared the CPU)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "peaks": peaks, "runs": rows, "summary": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
