"""Preprocessing time per real case, with 1 and 2 worker processes, and the cost of a resume pass.

    PYTHONPATH=src python benchmarks/bench_preprocess.py [DATA] [--workers 1 2] [--spacing X Y Z]

DATA defaults to $GLIOSEG_SHARED_DATA/brats18 or <repo>/../shared/data/brats18. Each worker count builds a fresh cache in a
temporary folder, then runs again over it (every case up to date: hashing only). Per-case
seconds are measured inside the worker (read + verify gzip + preprocess + write; ``meta.json``
field ``seconds``); wall s/case is the throughput of the whole run.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from glioseg.data.formats import discover
from glioseg.data.preprocess import PreprocessConfig, load_cache, preprocess_dataset

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    """$GLIOSEG_SHARED_DATA/brats18, else <repo>/../shared/data/brats18 (or one level up, from a worktree)."""
    candidates = [REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"]
    if os.environ.get("GLIOSEG_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["GLIOSEG_SHARED_DATA"]))
    return next((c / "brats18" for c in candidates if (c / "brats18").is_dir()), candidates[-1] / "brats18")


def measure(data: Path, workers: int, config: PreprocessConfig) -> dict:
    dataset = discover(data)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        start = time.perf_counter()
        cache = load_cache(preprocess_dataset(dataset, Path(tmp) / "cache", config, workers=workers))
        wall = time.perf_counter() - start
        start = time.perf_counter()
        preprocess_dataset(dataset, cache.path, config, workers=workers)
        resume = time.perf_counter() - start
        per_case = [cache.meta(c)["seconds"] for c in cache.case_ids]
        size = sum(f.stat().st_size for f in cache.path.rglob("*.npy")) / len(cache)
    return {"workers": workers, "cases": len(per_case), "wall": wall, "resume": resume,
            "mean": statistics.mean(per_case), "median": statistics.median(per_case), "mib": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=default_data())
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--spacing", type=float, nargs=3, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = PreprocessConfig(target_spacing=tuple(args.spacing) if args.spacing else None)
    print(f"data {args.data}, spacing {config.target_spacing or 'native'}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = [measure(args.data, w, config) for w in args.workers]
    print(f"{'workers':>7} {'cases':>5} {'wall s':>7} {'wall s/case':>11} {'mean s/case':>11} "
          f"{'median s/case':>13} {'MiB/case':>8} {'resume s':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['cases']:>5} {r['wall']:>7.1f} {r['wall'] / r['cases']:>11.2f} "
              f"{r['mean']:>11.2f} {r['median']:>13.2f} {r['mib']:>8.1f} {r['resume']:>8.1f}")


if __name__ == "__main__":
    main()
