"""CPU convolution kernels: aten's choice next to glioseg.models.cpu_conv, per layer and per training step.

``layers``: every distinct dense 3D convolution of a registered network at a patch size (shapes
found by running the network once with hooks), with the backend aten picks for it (``slow`` =
``slow_conv3d``, by the ``N·C·D·H > 20480`` rule for batch 1) and the median time of forward,
input gradient and weight gradient, aten's and cpu_conv's (both weight-gradient forms), times the
number of such layers in the network. ``step``: whole training steps (forward, Dice loss,
backward, Adam) of the network in variants, interleaved so that load changes hit all alike:
``plain`` (as the registry builds it: channels-last 3D for SegResNet), ``contiguous`` (NCDHW),
``cpuconv`` (after ``accelerate_cpu_convs``), ``cpuconv-nopad`` (the same without padding
lane-misaligned widths, ``cpu_conv.LANES`` = 1), ``compile`` (``torch.compile``, inductor); median
seconds, speed-ups against the first variant, the first step of each (compilation), and the share
of the first variant's step spent in convolutions that aten runs on ``slow_conv3d`` (torch.profiler).

    PYTHONPATH=src python benchmarks/bench_cpu_conv.py layers --model segresnet --patch 64
    PYTHONPATH=src python benchmarks/bench_cpu_conv.py step --model segresnet --patch 64 96 --reps 5
    PYTHONPATH=src python benchmarks/bench_cpu_conv.py step --model dalight3d --patch 64 96 --variants cpuconv-nopad cpuconv
    PYTHONPATH=src python benchmarks/bench_cpu_conv.py step --patch 64 --variants plain contiguous cpuconv compile

``--clock cpu`` times process CPU seconds instead of wall seconds (use it with ``--threads 1`` on a
shared, loaded machine: it then counts the work, not the waiting for a core).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from glioseg.models import cpu_conv
from glioseg.models.registry import create
from glioseg.training.losses import SegmentationLoss

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
VARIANTS = ("plain", "contiguous", "cpuconv", "cpuconv-nopad", "compile")


def timed(fn, reps: int, clock) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def conv_layers(model: nn.Module, patch: int) -> dict[tuple, int]:
    """{(c_in, c_out, kernel, stride, padding, input shape): count} of the dense Conv3d layers."""
    found: dict[tuple, int] = {}

    def hook(module, args, _out):
        key = (module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
               module.padding[0], tuple(args[0].shape))
        found[key] = found.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv3d) and m.groups == 1 and m.kernel_size != (1, 1, 1)]
    with torch.no_grad():
        model(torch.zeros(1, 4, patch, patch, patch))
    for h in handles:
        h.remove()
    return found


def aten_backend(shape: tuple, kernel: int) -> str:
    return "mkldnn" if cpu_conv.aten_uses_mkldnn(shape, (kernel,) * 3) else "slow"


def layer_row(key: tuple, reps: int, clock) -> dict:
    c_in, c_out, k, s, p, shape = key
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c_out, c_in, k, k, k)
    st, pd = (s,) * 3, (p,) * 3
    g = torch.randn_like(F.conv3d(x, w, None, s, p))
    t = lambda fn: 1e3 * timed(fn, reps, clock)  # noqa: E731
    return {
        "fwd": t(lambda: F.conv3d(x, w, None, s, p)),
        "fwd_fast": t(lambda: cpu_conv.mkldnn_conv(x, w, None, st, pd)),
        "gx": t(lambda: torch.nn.grad.conv3d_input(x.shape, w, g, s, p)),
        "gx_fast": t(lambda: cpu_conv.input_grad(g, w, x.shape, st, pd)),
        "gw": t(lambda: cpu_conv.aten_weight_grad(x, g, w, st, pd)),
        "gw_swap": t(lambda: cpu_conv.swapped_weight_grad(x, g, w.shape[2:], st, pd)),
    }


def run_layers(args, clock) -> None:
    for patch in args.patch:
        layers = conv_layers(create(args.model), patch)
        print(f"\n{args.model} {patch}^3, batch 1, {torch.get_num_threads()} threads, {args.clock} ms "
              f"(median of {args.reps}); x n = layers of that shape")
        cols = ("fwd", "fwd_fast", "gx", "gx_fast", "gw", "gw_swap")
        print(f"{'c_in>c_out k s @input':28s} {'n':>2s} {'aten':>6s} " + " ".join(f"{c:>8s}" for c in cols)
              + "  swap?")
        totals = dict.fromkeys(cols, 0.0)
        for key, n in layers.items():
            row = layer_row(key, args.reps, clock)
            for c in cols:
                totals[c] += n * row[c]
            c_in, c_out, k, s, _, shape = key
            name = f"{c_in}>{c_out} k{k} s{s} @{shape[2]}"
            print(f"{name:28s} {n:2d} {aten_backend(shape, k):>6s} " + " ".join(f"{row[c]:8.1f}" for c in cols)
                  + f"  {cpu_conv.swap_weight_grad_pays(shape, (k,) * 3, (s,) * 3)}")
        print(f"{'total x n':28s} {'':2s} {'':6s} " + " ".join(f"{totals[c]:8.0f}" for c in cols))


def make_step(model: nn.Module, patch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, patch, patch, patch, generator=gen)
    y = (torch.rand(1, 3, patch, patch, patch, generator=gen) > 0.7).float()
    loss_fn = SegmentationLoss("dice")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def slow_share(step) -> float:
    """Share of a step's operator self-time in convolutions aten runs on ``slow_conv3d``: their
    forward (``slow_conv3d_forward``) and their ``convolution_backward`` (told apart by shape)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    slow = 0.0
    for e in events:
        if "slow_conv" in e.key:
            slow += e.self_cpu_time_total
        elif e.key == "aten::convolution_backward":
            _, x_shape, w_shape = e.input_shapes[:3]
            if len(x_shape) == 5 and not cpu_conv.aten_uses_mkldnn(x_shape, w_shape[2:]):
                slow += e.self_cpu_time_total
    return slow / total if total else float("nan")


def build_variant(name: str, model_name: str, reference: nn.Module) -> nn.Module:
    """``reference`` (as the registry builds it) turned into one variant, same weights."""
    if name == "plain":
        return copy.deepcopy(reference)
    if name == "contiguous":
        model = create(model_name, channels_last=False)
        model.load_state_dict(reference.state_dict())
        return model.train()
    if name in ("cpuconv", "cpuconv-nopad"):
        return cpu_conv.accelerate_cpu_convs(copy.deepcopy(reference))
    if name == "compile":
        return torch.compile(copy.deepcopy(reference))
    raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")


def with_lanes(step, lanes: int):
    """``step`` run with ``cpu_conv.LANES`` set to ``lanes`` (1: every width counts as aligned)."""
    def run() -> None:
        saved, cpu_conv.LANES = cpu_conv.LANES, lanes
        try:
            step()
        finally:
            cpu_conv.LANES = saved
    return run


def run_steps(args, clock) -> None:
    """Median step time per variant, interleaved; the first (untimed) step of each is reported
    too, since it holds torch.compile's compilation."""
    print(f"{'model':10s} {'patch':>5s} " + " ".join(f"{v + ' s':>11s}" for v in args.variants)
          + " " + " ".join(f"{v + ' x':>11s}" for v in args.variants[1:])
          + f" {'first steps s':>14s} {'slow_conv3d':>11s}")
    for patch in args.patch:
        torch.manual_seed(0)
        reference = create(args.model).train()
        steps, first = {}, {}
        for name in args.variants:
            steps[name] = make_step(build_variant(name, args.model, reference), patch)
            if name == "cpuconv-nopad":
                steps[name] = with_lanes(steps[name], 1)
            start = time.perf_counter()
            steps[name]()
            first[name] = time.perf_counter() - start
        times = {name: [] for name in steps}
        for _ in range(args.reps):
            for name, fn in steps.items():
                start = clock()
                fn()
                times[name].append(clock() - start)
        med = {name: statistics.median(v) for name, v in times.items()}
        base = med[args.variants[0]]
        share = slow_share(steps[args.variants[0]]) if args.profile else float("nan")
        print(f"{args.model:10s} {patch:5d} " + " ".join(f"{med[v]:11.2f}" for v in args.variants)
              + " " + " ".join(f"{base / med[v]:10.2f}x" for v in args.variants[1:])
              + f" {'/'.join(f'{first[v]:.0f}' for v in args.variants):>14s} {100 * share:10.1f}%", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("layers", "step"))
    parser.add_argument("--model", default="segresnet")
    parser.add_argument("--patch", type=int, nargs="+", default=[64])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain", "cpuconv"],
                        help="step: networks to compare; speed-ups are against the first")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="step: skip the profiled run that measures the first variant's slow_conv3d share")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock {args.clock}")
    (run_layers if args.mode == "layers" else run_steps)(args, CLOCKS[args.clock])


if __name__ == "__main__":
    main()
