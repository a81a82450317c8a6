"""Full-case CPU inference: the MONAI BraTS recipe against glioseg's default, same weights, one run.

    PYTHONPATH=src python benchmarks/bench_inference.py [--case DIR] [--models segresnet dalight3d]
        [--checkpoint CKPT ...] [--patch 128 128 128] [--threads N] [--pipelines recipe glioseg ...]

Every pipeline predicts one real 240x240x155 case from its NIfTI files to a label map on the
file's grid, in its own subprocess (so that its peak resident memory, ``ru_maxrss`` from
``os.wait4``, is its own; an ``idle`` worker that only imports, loads the model and reads the
case gives the baseline inside every number). All pipelines share glioseg's reading and
normalisation (z-score over the brain, 0 outside, as MONAI's NormalizeIntensityd(nonzero=True)
does) and differ only in where the network runs:

- ``recipe``: MONAI's published BraTS recipe, one 240x240x160 window over the whole RAS volume
  (MONAI pads 155 to 160), overlap 0.5, fp32, the network in PyTorch's default layout
  (channels-first, as MONAI builds it) on torch's own convolution kernels;
- ``glioseg`` (the default of ``glioseg predict``): one window over the brain's bounding box,
  rounded up to the network's size divisor (overlap 0.5 is then moot: a single window), on
  glioseg's CPU convolution kernels (``glioseg.models.cpu_conv``), as ``glioseg predict`` runs;
- ``patch-0.5`` / ``patch-0.25``: Gaussian windows of the training patch with overlap 0.5 / 0.25;
- ``volume`` (``glioseg predict --roi volume``): the recipe's one window over the whole volume,
  on glioseg's kernels and layout: the recipe's computation, so its labels, faster;
- ``glioseg-bf16``: the default under bf16 autocast, added only on CPUs with native bf16
  (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32 (2.5x to ~90x).

Agreement is Dice per region of each pipeline's labels against the recipe's; where the case has an
expert label (``*_seg.nii.gz``), each pipeline's Dice against it is printed too. With random
weights (no ``--checkpoint``) the network's output is a function of its input, so agreement
between pipelines still measures the pipelines; but a nearly empty or nearly full region makes it
trivial, so the table prints each region's size in the recipe's prediction. GFLOP/s is the FLOPs
of the windows actually run (each window shape counted once on the meta device by
``glioseg.models.flops``: convolutions and matrix products, not norms or activations) over the
inference time, against a big fp32 Conv3d measured here. Other processes may share the cores: times are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ("recipe", "glioseg", "patch-0.5", "patch-0.25", "volume", "glioseg-bf16")
# name → (window, overlap, precision) of glioseg's predictor
GLIOSEG = {"glioseg": ("box", 0.5, "fp32"), "patch-0.5": ("patch", 0.5, "fp32"),
           "patch-0.25": ("patch", 0.25, "fp32"), "volume": ("volume", 0.5, "fp32"),
           "glioseg-bf16": ("box", 0.5, "bf16")}
RECIPE_ROI = (240, 240, 160)
# Training patches of the shipped recipes (src/glioseg/recipes/*.yaml), used with random weights.
RECIPE_PATCH = {"segresnet": (128, 128, 128), "dalight3d": (64, 64, 64)}


def default_case() -> Path:
    for shared in (REPO.parent / "shared", REPO.parent.parent / "shared"):
        if (shared / "data" / "brats18").is_dir():
            return shared / "data" / "brats18" / "Brats18_TCIA01_201_1"
    return REPO.parent / "shared" / "data" / "brats18" / "Brats18_TCIA01_201_1"


# ---- the worker: one pipeline in its own process ----

class CountingModel(torch.nn.Module):
    """Counts the window shapes the network sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, Counter()

    def forward(self, x):
        self.shapes[tuple(x.shape)] += 1
        return self.model(x)


def read_case(case_dir: Path, bundle):
    from glioseg.data import preprocess
    from glioseg.data.cases import load_case
    from glioseg.inference.inputs import from_path

    (item,) = from_path(case_dir, bundle.channels, None)
    image, _ = load_case(item.case, item.dataset)
    array, _, meta = preprocess.preprocess_case(image, None, item.case, bundle.preprocess_config(),
                                                channels=bundle.channels, inputs={})
    return item, image, array, meta


def recipe_model(bundle):
    """The bundle's network as the recipe runs it: channels-first where glioseg's default is channels-last."""
    import dataclasses

    from glioseg.models.registry import get_spec

    if "channels_last" in {f.name for f in dataclasses.fields(get_spec(bundle.model).config)}:
        bundle = dataclasses.replace(bundle, options={**bundle.options, "channels_last": False})
    return bundle.build_model()


def _recipe_probabilities(model, array: np.ndarray, meta: dict, output) -> np.ndarray:
    """The recipe: the z-scored RAS volume uncropped (zeros outside the brain), one big window."""
    from monai.inferers import sliding_window_inference

    from glioseg.data import preprocess

    full = preprocess.uncrop(array, meta["crop"]["box"], tuple(meta["ras"]["shape"]))
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(full)[None], RECIPE_ROI, 1, model, overlap=0.5)
    probs = output.activation(logits)[0].numpy()
    return preprocess.crop(probs, meta["crop"]["box"])  # back to cache space for the shared mapping


def worker(args) -> None:
    from glioseg.data import preprocess
    from glioseg.inference.bundle import load_bundle
    from glioseg.inference.predictor import PredictConfig, Predictor, TorchNetwork

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bundle = load_bundle(args.model_file)
    network = TorchNetwork(bundle)
    counting = CountingModel(recipe_model(bundle) if args.worker == "recipe" else network.model)
    network.model = counting
    network.takes_ids = False
    item, image, array, meta = read_case(args.case, bundle)
    t_pre = time.perf_counter()
    if args.worker == "idle":
        print(json.dumps({"total": t_pre - start}))
        return
    if args.worker == "recipe":
        probs = _recipe_probabilities(counting, array, meta, bundle.output)
    else:
        window, overlap, precision = GLIOSEG[args.worker]
        config = PredictConfig(window=window, overlap=overlap, precision=precision)
        probs, _ = Predictor([network], config).case_probabilities(array, meta)
    t_inf = time.perf_counter()
    # sigmoid > 0.5, or the softmax argmax, nested as predict writes it
    label = preprocess.to_original(bundle.output.label_map(probs, item.scheme), meta, order=0)
    t_post = time.perf_counter()
    np.save(args.out, label)
    print(json.dumps({"read_preprocess": t_pre - start, "inference": t_inf - t_pre, "postprocess": t_post - t_inf,
                      "total": t_post - start, "windows": sum(counting.shapes.values()),
                      "window": list(next(iter(counting.shapes))[2:]), "flops": window_flops(bundle, counting.shapes),
                      "box": [hi - lo for lo, hi in meta["crop"]["box"]]}))


def window_flops(bundle, shapes: Counter) -> int:
    """FLOPs of the windows run: each (batch, C, x, y, z) shape counted once on the meta device."""
    from glioseg.models.flops import count_flops
    from glioseg.models.registry import create

    with torch.device("meta"):
        model = create(bundle.model, in_channels=bundle.in_channels, out_channels=bundle.out_channels,
                       **bundle.options)
    return sum(n * count_flops(model, shape[1], shape[2:], batch=shape[0]) for shape, n in shapes.items())


# ---- the parent: weights, conv peak, workers, table ----

def conv_peak(threads: int, repeats: int = 5) -> float:
    """GFLOP/s of a large fp32 Conv3d (64→64, 3³, batch 2 at 48³) on this CPU: the best of ``repeats``."""
    torch.set_num_threads(threads)
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 64, 48, 48, 48)
    flops = 2 * 64 * 64 * 27 * x.shape[0] * 48 ** 3
    best = float("inf")
    with torch.no_grad():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def make_weights(model: str, folder: Path, seed: int, patch) -> Path:
    """Random-init weights (seeded) of ``model`` released as safetensors + JSON for the workers."""
    from glioseg.data.formats import CHANNELS
    from glioseg.data.preprocess import PreprocessConfig
    from glioseg.inference.bundle import ModelBundle
    from glioseg.inference.export import write_released
    from glioseg.models.registry import create

    with torch.random.fork_rng():  # weights from the seed, without touching the caller's RNG
        torch.manual_seed(seed)
        net = create(model, in_channels=4, out_channels=3)
    bundle = ModelBundle(model=model, options={}, in_channels=4, out_channels=3, target="regions",
                         channels=CHANNELS, scheme="brats", preprocess=PreprocessConfig().to_dict(),
                         site_index={}, patch_size=tuple(patch), weights=net.state_dict())
    path = folder / f"{model}.safetensors"
    write_released(bundle, path)
    return path


def _worker_env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_worker(name: str, model_file: Path, case: Path, threads: int, out: Path) -> tuple[dict, float]:
    """(the worker's JSON, its peak resident memory in MiB)."""
    cmd = [sys.executable, __file__, "--worker", name, "--model-file", str(model_file), "--case", str(case),
           "--threads", str(threads), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_worker_env())
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {name} failed with exit code {proc.returncode}")
    return json.loads(stdout.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def region_masks(label: np.ndarray) -> dict[str, np.ndarray]:
    from glioseg.data.labels import get_scheme, labels_to_regions

    return dict(zip(("WT", "TC", "ET"), labels_to_regions(label, get_scheme("brats"))))


def bf16_native() -> bool:
    from glioseg.precisions import native_precisions

    return "bf16" in native_precisions("cpu")


def reference_masks(case: Path) -> dict[str, np.ndarray] | None:
    """The case's expert label (``*_seg.nii.gz``) as WT / TC / ET masks, or None without one."""
    import nibabel as nib

    found = sorted(case.glob("*_seg.nii*"))
    return region_masks(np.asarray(nib.load(found[0]).dataobj).astype(np.uint8)) if found else None


def print_table(model: str, rows: list[dict], peak: float, idle_mib: float, recipe_sizes: dict) -> None:
    print(f"\n{model}: recipe prediction sizes (voxels) " + ", ".join(f"{r} {n:,}" for r, n in recipe_sizes.items())
          + f"; idle worker (imports + model + case) {idle_mib:.0f} MiB")
    expert = all("expert" in r for r in rows)
    head = (f"{'pipeline':<11} {'window':<13} {'win':>3} {'infer s':>8} {'total s':>8} {'speed-up':>8} "
            f"{'peak MiB':>8} {'GFLOP':>7} {'GFLOP/s':>7} {'% peak':>6}  Dice WT / TC / ET vs recipe"
            + ("    vs expert label" if expert else ""))
    print(head)
    recipe_total = next(r for r in rows if r["name"] == "recipe")["total"]
    for r in rows:
        gflops = r["flops"] / 1e9
        rate = gflops / r["inference"]
        dices = " / ".join(f"{r['dice'][k]:.4f}" for k in ("WT", "TC", "ET"))
        window = "x".join(map(str, r["window"]))
        versus = "   " + " / ".join(f"{r['expert'][k]:.4f}" for k in ("WT", "TC", "ET")) if expert else ""
        print(f"{r['name']:<11} {window:<13} {r['windows']:>3} {r['inference']:>8.1f} {r['total']:>8.1f} "
              f"{recipe_total / r['total']:>7.2f}x {r['mib']:>8.0f} {gflops:>7.0f} {rate:>7.1f} "
              f"{100 * rate / peak:>5.0f}%  {dices}{versus}")


def measure_model(model_file: Path, args, tmp: Path) -> tuple[list[dict], float, dict]:
    """Every pipeline of one model: (rows, idle worker MiB, region sizes of the recipe's prediction)."""
    from glioseg.evaluation.metrics import dice

    _, idle_mib = run_worker("idle", model_file, args.case, args.threads, tmp / "idle.npy")
    rows, labels = [], {}
    for name in args.pipelines:
        result, mib = run_worker(name, model_file, args.case, args.threads, tmp / f"{name}.npy")
        labels[name] = region_masks(np.load(tmp / f"{name}.npy"))
        rows.append({"name": name, "mib": mib, **result})
    reference = reference_masks(args.case)
    for row in rows:
        row["dice"] = {k: dice(labels[row["name"]][k], labels["recipe"][k]) for k in ("WT", "TC", "ET")}
        if reference is not None:
            row["expert"] = {k: dice(labels[row["name"]][k], reference[k]) for k in ("WT", "TC", "ET")}
    return rows, idle_mib, {k: int(v.sum()) for k, v in labels["recipe"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=default_case())
    parser.add_argument("--models", nargs="+", default=["segresnet", "dalight3d"])
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=[],
                        help="trained checkpoints / released weights to use instead of random weights")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES[:5]), choices=PIPELINES)
    parser.add_argument("--patch", type=int, nargs=3,
                        help="training patch for random weights (default: the model's shipped recipe)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        return worker(args)
    if "recipe" not in args.pipelines:
        args.pipelines.insert(0, "recipe")
    if bf16_native() and "glioseg-bf16" not in args.pipelines:
        args.pipelines.append("glioseg-bf16")
    peak = conv_peak(args.threads)
    print(f"case {args.case.name}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} "
          f"(other processes share the cores: times are upper bounds); fp32 Conv3d peak at start "
          f"{peak:.1f} GFLOP/s; bf16: {'native' if bf16_native() else 'not native on this CPU (no AVX512-BF16 / AMX): skipped'}")
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        tmp = Path(tmp)
        patch = {m: tuple(args.patch or RECIPE_PATCH.get(m, (128, 128, 128))) for m in args.models}
        files = args.checkpoint or [make_weights(m, tmp, args.seed, patch[m]) for m in args.models]
        results = [measure_model(model_file, args, tmp) for model_file in files]
    # Contention lowers a peak measured once; the higher of two measurements is the fairer bound.
    peak = max(peak, conv_peak(args.threads))
    print(f"fp32 Conv3d peak (best of start and end): {peak:.1f} GFLOP/s")
    for model_file, (rows, idle_mib, sizes) in zip(files, results):
        print_table(model_file.stem, rows, peak, idle_mib, sizes)


if __name__ == "__main__":
    main()
