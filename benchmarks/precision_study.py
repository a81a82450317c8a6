"""Precision study: the same model, data, seeds and step budget under fp32, bf16, fp16 and auto.

Each (seed, policy) is one ``glioseg.training.trainer.train`` run in its own Python process, so
that ``ru_maxrss`` is that run's peak memory (on CUDA: ``torch.cuda.max_memory_allocated``); runs
are interleaved seed by seed so that load changes on a shared machine hit every policy alike.
Per run: median seconds per optimiser step (forward, fp32 loss, backward, controller, update;
data loading excluded), seconds per epoch (the training loop with data loading, no validation),
set-up seconds before the first step (the ``auto`` probe included), peak memory, final
whole-volume validation Dice WT/TC/ET, switches and skipped steps (from the run folder's
``steps.csv`` / ``precision_events.jsonl``), and the hardware. Results go to
``OUT/study.json`` and ``OUT/study.csv``; run folders to ``OUT/runs/<policy>-seed<seed>``.

On a CPU without native bf16/fp16 units (this project's AVX2 and AVX-512 machines), a bf16/fp16
autocast step is 2.5-90x slower than fp32 (SegResNet 64³ on the AVX-512 Xeon: bf16 2.5x, fp16
95x), so a full-size fp16 run would take days. Each run therefore has a wall-clock budget for its
training steps (``--max-seconds``): a run that reaches it stops after the step in progress and is
reported as ``budget: n of N steps`` with its measured seconds per step and no final Dice (its
model did not get the same training).

Small check (a few minutes on a 2-core CPU)::

    PYTHONPATH=src python benchmarks/precision_study.py --data ../shared/data/brats18 \\
        --out /tmp/precision-small --model-option init_filters=8 --patch 32 32 32 --steps 4 \\
        --epochs 1 --seeds 0 --val-fraction 0.05 --val-overlap 0.25 --max-seconds 25

Full study on this CPU (22 minutes on the quiet 2-core AVX-512 Xeon: fp32, bf16 and auto train
the whole 80 steps and are validated on 2 whole cases, fp16 stops at its 3-minute cap)::

    PYTHONPATH=src python benchmarks/precision_study.py --data ../shared/data/brats18 \\
        --out runs/precision-study-cpu --patch 64 64 64 --steps 40 --epochs 2 --seeds 0 1 \\
        --val-fraction 0.1 --max-seconds 180

On a GPU (paper recipe size; add seeds as time allows)::

    PYTHONPATH=src python benchmarks/precision_study.py --data ../shared/data/brats18 \\
        --out runs/precision-study-gpu --device cuda --patch 128 128 128 --steps 100 --epochs 10 \\
        --seeds 0 1 2 --workers 4 --max-seconds 3600
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from glioseg.precisions import describe_device
from glioseg.run_io import RunFiles
from trainer_timing import StopTraining, instrument_trainer

log = logging.getLogger("precision_study")

POLICIES = ("fp32", "bf16", "fp16", "auto")
COLUMNS = ("policy", "seed", "status", "steps", "planned_steps", "s_per_step", "s_per_epoch", "setup_s",
           "train_s", "total_s", "peak_mib", "dice_wt", "dice_tc", "dice_et", "switches", "skipped",
           "final_precision", "seconds_per_precision")


# -- one run, in its own process ------------------------------------------------------------------
def run_one(spec: dict) -> dict:
    """Train one policy as ``spec`` says (in this process) and return its measurements."""
    from glioseg.training.recipe import build_config
    from glioseg.training.trainer import train

    config = build_config(spec["recipe"], None, spec["overrides"])
    record: dict = {}
    started = time.perf_counter()
    status = "done"
    try:
        train(config, Path(spec["data"]), Path(spec["out"]),
              callbacks=[instrument_trainer(record, max_seconds=spec["max_seconds"])])
    except StopTraining:
        status = "budget"
    if config.device != "cpu" and torch.cuda.is_available():
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"
    setup = record.get("first_step_at", time.perf_counter()) - started
    return {"status": status, "step_seconds": record["step_seconds"], "epoch_seconds": record["epoch_seconds"],
            "setup_s": setup, "peak_mib": peak, "peak_kind": kind,
            "planned_steps": config.epochs * config.steps_per_epoch}


# -- reading a run folder ---------------------------------------------------------------------------
def read_run(folder: Path) -> dict:
    """Final Dice, switches, skipped steps and last precision from a run folder's logs."""
    out = {"dice_wt": None, "dice_tc": None, "dice_et": None, "switches": 0, "skipped": 0,
           "final_precision": None, "probe": None, "seconds_per_precision": {}}
    files = RunFiles(folder)
    rows = [r for r in files.read_metric_rows() if r.get("val_dice_wt")]
    if rows:
        out.update({f"dice_{r}": float(rows[-1][f"val_dice_{r}"]) for r in ("wt", "tc", "et")})
    steps = files.read_steps()
    out["skipped"] = sum(int(r["skipped"]) for r in steps)
    out["final_precision"] = steps[-1]["precision"] if steps else None
    events = files.read_events()
    out["switches"] = sum(e["from"] != e["to"] for e in events)
    out["probe"] = next((e["reason"] for e in events if e.get("signal") == "probe"), None)
    summary = files.read_summary()
    if summary:
        out["seconds_per_precision"] = {p: round(t, 1) for p, t in summary["seconds_per_precision"].items() if t}
    return out


# -- the study --------------------------------------------------------------------------------------
def hardware(device: str) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "gpu": None,
            "load_average": os.getloadavg(), "device": describe_device("cpu")}
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def ensure_cache(data: Path, out: Path) -> Path:
    """``data`` if it is a glioseg cache, else one cache built once in ``out/cache`` for every run."""
    if (data / "cache.json").is_file():
        return data
    from glioseg.data.formats import discover
    from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
    return preprocess_dataset(discover(data), out / "cache", PreprocessConfig())


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option / --precision-option need KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def run_spec(args, data: Path, policy: str, seed: int) -> dict:
    from glioseg.training.settings import default_recipe
    overrides = {"model": args.model, "precision": policy, "epochs": args.epochs,
                 "steps_per_epoch": args.steps, "patch": tuple(args.patch), "batch_size": args.batch_size,
                 "seed": seed, "val_every": args.epochs, "val_fraction": args.val_fraction,
                 "val_overlap": args.val_overlap, "workers": args.workers, "device": args.device}
    if args.model_option:
        overrides["model_options"] = parse_options(args.model_option)
    if args.precision_option:
        overrides["precision"] = {**parse_options(args.precision_option), "policy": policy}
    return {"recipe": args.recipe or default_recipe(args.model), "overrides": overrides, "data": str(data),
            "out": str(args.out / "runs" / f"{policy}-seed{seed}"), "max_seconds": args.max_seconds}


def launch(spec: dict, spec_path: Path) -> dict:
    """Run one spec in a fresh interpreter; its progress bar goes to this terminal."""
    spec_path.write_text(json.dumps(spec))
    result_path = spec_path.with_suffix(".result.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), "--result", str(result_path)]
    proc = subprocess.run(cmd, env=os.environ.copy())
    if proc.returncode != 0 or not result_path.exists():
        return {"status": f"failed (exit {proc.returncode})", "step_seconds": [], "epoch_seconds": [],
                "setup_s": None, "peak_mib": None, "planned_steps": None}
    return json.loads(result_path.read_text())


def summarise(policy: str, seed: int, result: dict, folder: Path) -> dict:
    steps = result["step_seconds"]
    row = {"policy": policy, "seed": seed, "status": result["status"], "steps": len(steps),
           "planned_steps": result["planned_steps"],
           "s_per_step": statistics.median(steps) if steps else None,
           "s_per_epoch": statistics.median(result["epoch_seconds"]) if result["status"] == "done"
           and result["epoch_seconds"] else None,
           "setup_s": result["setup_s"], "peak_mib": result["peak_mib"]}
    row["train_s"] = sum(result["epoch_seconds"]) if result["epoch_seconds"] else None
    row["total_s"] = (row["train_s"] + row["setup_s"]) if row["train_s"] is not None and row["setup_s"] is not None \
        else None
    logs = read_run(folder)
    row.update({k: logs[k] for k in ("dice_wt", "dice_tc", "dice_et", "switches", "skipped", "final_precision",
                                     "seconds_per_precision")})
    if result["status"] == "budget":
        row.update(dice_wt=None, dice_tc=None, dice_et=None)
    row["probe"] = logs["probe"]
    return row


def fmt(value, spec: str) -> str:
    """``value`` in ``spec`` (e.g. "8.3f"), or a dash of the same width."""
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value, spec)


def print_totals(rows: list[dict]) -> None:
    """Each policy's whole time (set-up with the probe + training loop) against fp32's, seed by seed."""
    fp32 = {r["seed"]: r["total_s"] for r in rows if r["policy"] == "fp32" and r.get("total_s")}
    for r in rows:
        if r["policy"] != "fp32" and r.get("total_s") and r["seed"] in fp32:
            saved = 1.0 - r["total_s"] / fp32[r["seed"]]
            spent = ", ".join(f"{p} {t:.0f} s" for p, t in (r.get("seconds_per_precision") or {}).items())
            print(f"{r['policy']} seed {r['seed']}: {saved:+.1%} less time than fp32 "
                  f"({r['total_s']:.0f} s vs {fp32[r['seed']]:.0f} s; steps: {spent})")


def print_table(rows: list[dict], hw: dict, args) -> None:
    print(f"\nPrecision study: {args.model} {args.model_option or ''}, patch {'x'.join(map(str, args.patch))}, "
          f"batch {args.batch_size}, {args.epochs} epoch(s) x {args.steps} steps, seeds {args.seeds}, "
          f"budget {args.max_seconds or 'none'} s of steps per run")
    print(f"hardware: {hw['cpu']}, {hw['cores']} cores, torch {hw['torch']} ({hw['torch_threads']} threads)"
          f"{', GPU ' + hw['gpu'] if hw['gpu'] else ''} ({hw['device']}); load average {hw['load_average'][0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'policy':6s} {'seed':>4s} {'steps':>13s} {'s/step':>8s} {'s/epoch':>8s} {'setup s':>8s} "
          f"{'train s':>8s} {'total s':>8s} {'peak MiB':>9s} {'Dice WT':>8s} {'TC':>6s} {'ET':>6s} "
          f"{'switch':>6s} {'skip':>5s} {'final':>6s}")
    for r in rows:
        steps = f"{r['steps']}/{r['planned_steps']}" + (" budget" if r["status"] == "budget" else "")
        if r["status"].startswith("failed"):
            steps = r["status"]
        print(f"{r['policy']:6s} {r['seed']:4d} {steps:>13s} {fmt(r['s_per_step'], '8.3f')} "
              f"{fmt(r['s_per_epoch'], '8.1f')} {fmt(r['setup_s'], '8.1f')} {fmt(r.get('train_s'), '8.1f')} "
              f"{fmt(r.get('total_s'), '8.1f')} {fmt(r['peak_mib'], '9.0f')} "
              f"{fmt(r['dice_wt'], '8.3f')} {fmt(r['dice_tc'], '6.3f')} {fmt(r['dice_et'], '6.3f')} "
              f"{r['switches']:6d} {r['skipped']:5d} {r['final_precision'] or '-':>6s}")
    fp32 = [r["s_per_step"] for r in rows if r["policy"] == "fp32" and r["s_per_step"]]
    if fp32:
        base = statistics.median(fp32)
        for policy in dict.fromkeys(r["policy"] for r in rows):
            times = [r["s_per_step"] for r in rows if r["policy"] == policy and r["s_per_step"]]
            if times and policy != "fp32":
                print(f"{policy}: {statistics.median(times) / base:.2f}x fp32's time per step")
    print_totals(rows)
    for r in rows:
        if r["probe"]:
            print(f"auto probe (seed {r['seed']}): {r['probe']}")
    budgeted = [r for r in rows if r["status"] == "budget"]
    if budgeted:
        print("budget: runs marked 'budget' stopped after the time cap; their s/step is measured over the steps "
              "they made, and they have no final Dice (they did not get the planned training).")


def write_results(out: Path, rows: list[dict], hw: dict, args) -> None:
    settings = study_settings(args)
    (out / "study.json").write_text(json.dumps({"hardware": hw, "settings": settings, "runs": rows}, indent=2))
    with open(out / "study.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def study_settings(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("worker", "result")}


def check_same_study(out: Path, args) -> None:
    """A second call with the same command continues the study; other settings are refused."""
    saved = out / "study.json"
    if saved.exists():
        before = json.loads(saved.read_text())["settings"]
        changed = sorted(k for k in set(before) | set(study_settings(args)) if before.get(k) != study_settings(args).get(k))
        if changed:
            raise SystemExit(f"{out} holds a study with other settings ({', '.join(changed)}); pass another --out")


def run_or_reuse(spec: dict, spec_path: Path) -> dict:
    """A finished run's measurements are reused; an interrupted one is timed again from scratch
    (a resumed run's timings would mix two processes)."""
    result_path = spec_path.with_suffix(".result.json")
    if result_path.exists() and Path(spec["out"]).exists():
        return json.loads(result_path.read_text())
    if Path(spec["out"]).exists():
        shutil.rmtree(spec["out"])
    return launch(spec, spec_path)


def markdown_table(rows: list[dict]) -> str:
    """The study's rows as a Markdown table (for docs/results)."""
    head = ("policy", "seed", "steps", "s/step", "set-up s", "train s", "total s", "vs fp32", "peak MiB",
            "Dice WT / TC / ET", "switches", "time per precision")
    fp32 = {r["seed"]: r["total_s"] for r in rows if r["policy"] == "fp32" and r.get("total_s")}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = (f"{1 - r['total_s'] / fp32[r['seed']]:+.1%}" if r["policy"] != "fp32" and r.get("total_s")
                 and r["seed"] in fp32 else "")
        dice = " / ".join(fmt(r[f"dice_{g}"], ".3f") for g in ("wt", "tc", "et"))
        spent = ", ".join(f"{p} {t:.0f} s" for p, t in (r.get("seconds_per_precision") or {}).items())
        lines.append(f"| {r['policy']} | {r['seed']} | {r['steps']}/{r['planned_steps']} | {fmt(r['s_per_step'], '.2f')} "
                     f"| {fmt(r['setup_s'], '.1f')} | {fmt(r.get('train_s'), '.0f')} | {fmt(r.get('total_s'), '.0f')} "
                     f"| {ratio} | {fmt(r['peak_mib'], '.0f')} | {dice} | {r['switches']} | {spent} |")
    return "\n".join(lines) + "\n"


def study(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    check_same_study(args.out, args)
    hw = hardware(args.device)
    data = ensure_cache(args.data, args.out)
    rows = []
    for seed in args.seeds:
        for policy in args.policies:
            spec = run_spec(args, data, policy, seed)
            log.info("run %s seed %d", policy, seed)
            result = run_or_reuse(spec, args.out / f"{policy}-seed{seed}.spec.json")
            rows.append(summarise(policy, seed, result, Path(spec["out"])))
            write_results(args.out, rows, hw, args)
    print_table(rows, hw, args)
    (args.out / "study.md").write_text(markdown_table(rows))
    print(f"\nresults: {args.out / 'study.json'}, {args.out / 'study.csv'}, {args.out / 'study.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, help="dataset folder or glioseg cache")
    parser.add_argument("--out", type=Path, help="study folder (must not hold runs of the same names)")
    parser.add_argument("--model", default="segresnet")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="network option, e.g. init_filters=8 (repeatable)")
    parser.add_argument("--precision-option", action="append", default=[], metavar="KEY=VALUE",
                        help="precision controller setting, e.g. warmup_steps=25 (repeatable)")
    parser.add_argument("--recipe", default=None, help="default: the model's recipe")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--steps", type=int, default=25, help="optimiser steps per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="data-loading worker processes")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--val-overlap", type=float, default=0.5)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="wall-clock budget of each run's training steps (default: none)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.worker:
        result = run_one(json.loads(args.worker.read_text()))
        args.result.write_text(json.dumps(result))
        return
    if args.data is None or args.out is None:
        parser.error("--data and --out are required")
    study(args)


if __name__ == "__main__":
    main()
