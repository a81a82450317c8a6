"""Cost of the precision controller's bookkeeping next to a plain training step.

For each model and patch size this runs, interleaved so that load changes hit both alike:

- plain:      forward, fp32 loss, ``loss.backward()``, ``optimizer.step()``, ``zero_grad``;
- controller: the same step through ``training.update.optimizer_update`` (the trainer's), policy ``fp32`` and
  ``auto`` (probed; on an AVX2-only CPU it settles in fp32, so both do the same arithmetic).

The bookkeeping is the controller's own work (``review`` and ``conclude``: the one device sync,
signals, decision); the gradient norm is now the loop's, as are ``backward``, ``optimizer.step``
and freeing the gradients. It is timed inside the controller (``ctrl.bookkeeping_seconds``), so it stays
measurable on a loaded machine where the difference of two step times is noise. Printed: median plain step, median controller
step, median bookkeeping per step and its share of the plain step. Target: < 2 %.

    PYTHONPATH=src python benchmarks/bench_precision_overhead.py
    PYTHONPATH=src python benchmarks/bench_precision_overhead.py --sizes 16 32 --reps 40
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from monai.networks.nets import SegResNet

from glioseg.training.precision import PrecisionConfig, PrecisionController
from glioseg.training.update import optimizer_update


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))


def segresnet() -> torch.nn.Module:
    return SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))


MODELS = {"tiny": tiny_net, "segresnet": segresnet}


def make_steps(name: str, size: int, policy: str):
    torch.manual_seed(0)
    model = MODELS[name]()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(1, 4, size, size, size)
    y = (torch.rand(1, 3, size, size, size) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ctrl = PrecisionController(PrecisionConfig(policy=policy, probe_steps=2), "cpu")
    params = list(model.parameters())

    def plain() -> None:
        loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)

    def controlled() -> None:
        with ctrl.autocast():
            logits = model(x)
        optimizer_update(ctrl, loss_fn(logits.float(), y), params, optimizer,
                         max_grad_norm=ctrl.config.max_grad_norm)

    if ctrl.needs_probe:
        def probe_step(precision: str) -> None:
            with ctrl.autocast(precision):
                logits = model(x)
            loss_fn(logits.float(), y).backward()
            model.zero_grad(set_to_none=True)
        ctrl.probe(probe_step, model=model)
    return plain, controlled, ctrl


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, size: int, policy: str, reps: int) -> dict:
    plain, controlled, ctrl = make_steps(name, size, policy)
    for _ in range(2):
        plain(), controlled()
    base, full, books = [], [], []
    for rep in range(reps):
        before = ctrl.bookkeeping_seconds
        if rep % 2:   # alternate the order so neither always runs on a warmer cache
            full.append(timed(controlled))
            base.append(timed(plain))
        else:
            base.append(timed(plain))
            full.append(timed(controlled))
        books.append(ctrl.bookkeeping_seconds - before)
    plain_s, book_s = statistics.median(base), statistics.median(books)
    return {"model": name, "size": size, "policy": policy, "precision": ctrl.precision,
            "plain_ms": plain_s * 1e3, "ctrl_ms": statistics.median(full) * 1e3,
            "book_ms": book_s * 1e3, "percent": 100.0 * book_s / plain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "segresnet"], choices=MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--policies", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.reps} paired reps, CPU")
    header = f"{'model':<10}{'size':>5} {'policy':<7}{'runs in':<8}{'plain ms':>10}" \
             f"{'ctrl ms':>10}{'bookkeeping ms':>16}{'share':>9}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        for size in args.sizes:
            for policy in args.policies:
                r = measure(name, size, policy, args.reps)
                print(f"{r['model']:<10}{r['size']:>5} {r['policy']:<7}{r['precision']:<8}"
                      f"{r['plain_ms']:>10.1f}{r['ctrl_ms']:>10.1f}{r['book_ms']:>16.3f}"
                      f"{r['percent']:>8.2f}%")


if __name__ == "__main__":
    main()
