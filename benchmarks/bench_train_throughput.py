"""End-to-end training throughput: glioseg's training loop next to the published MONAI SegResNet recipe.

Both train the same network (MONAI SegResNet, init 16, blocks 1-2-2-4 / 1-1-1, dropout 0.2, 4 → 3
region channels) with Dice loss (sigmoid, squared_pred, smooth_nr 0, smooth_dr 1e-5) and Adam
(1e-4, weight decay 1e-5) on the same real cases, patch size, batch size, torch thread count and
number of DataLoader worker processes, in one process, one after the other:

- ``monai``: the tutorial recipe (MONAI tutorials, 3d_segmentation/brats_segmentation_3d): every
  step reads its case from NIfTI (``LoadImaged``, no cache), then EnsureChannelFirstd,
  ConvertToMultiChannelBasedOnBratsClassesd, Orientationd RAS, Spacingd 1 mm, RandSpatialCropd
  (the patch), RandFlipd on each axis, NormalizeIntensityd (nonzero, channel-wise),
  RandScaleIntensityd 0.1, RandShiftIntensityd 0.1; ``monai.data.DataLoader`` with shuffling.
- ``glioseg``: ``glioseg.training.trainer.train`` itself (precision controller, per-step logs and
  all) on the preprocessed cache: memory-mapped volumes, ``PatchDataset`` (tumour-centred share,
  flips, intensity scale/shift), ``make_loader``. Validation is off and the run stops after its
  steps, so only the training loop is timed.
- ``glioseg-torchconv``: the same with the trainer's ``accelerate_cpu`` turned off, so every
  convolution and GroupNorm takes aten's own kernels (what glioseg's CPU kernels gain).

Steps per second are counted from the end of step ``--warmup`` to the end of the last step, so
they include waiting for data but not start-up (worker spawn, first batch). The one-time cost of
building the glioseg cache is printed apart (``glioseg preprocess``, amortised over a training
run). With ``--rounds`` > 1 every variant runs again, in alternating order; medians are printed.

    PYTHONPATH=src python benchmarks/bench_train_throughput.py --data ../shared/data/brats18 \\
        --patch 64 96 128 --steps 20 --warmup 3 --workers 1 --threads 2
"""
from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from trainer_timing import StopTraining, instrument_trainer

log = logging.getLogger("bench_train_throughput")

VARIANTS = ("monai", "glioseg", "glioseg-torchconv")
MODALITIES = ("flair", "t1", "t1ce", "t2")


# -- the MONAI tutorial recipe (the baseline, built here on purpose) -------------------------------
def monai_files(data: Path) -> list[dict]:
    """BraTS 2017-2021 layout: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz."""
    files = []
    for case in sorted(p for p in data.iterdir() if p.is_dir()):
        images = [case / f"{case.name}_{m}.nii.gz" for m in MODALITIES]
        label = case / f"{case.name}_seg.nii.gz"
        if all(p.exists() for p in images) and label.exists():
            files.append({"image": [str(p) for p in images], "label": str(label)})
    if not files:
        raise ValueError(f"{data}: no BraTS cases (<case>/<case>_flair.nii.gz ...) found")
    return files


def monai_transforms(patch: tuple[int, int, int], seed: int):
    from monai import transforms as T
    keys = ["image", "label"]
    transform = T.Compose([
        T.LoadImaged(keys=keys),
        T.EnsureChannelFirstd(keys="image"),
        T.EnsureTyped(keys=keys),
        T.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
        T.Orientationd(keys=keys, axcodes="RAS"),
        T.Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        T.RandSpatialCropd(keys=keys, roi_size=list(patch), random_size=False),
        T.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        T.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        T.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        T.RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        T.RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ])
    transform.set_random_state(seed=seed)
    return transform


def monai_run(files: list[dict], args, patch, device: torch.device) -> list[float]:
    """Train the tutorial recipe for ``args.steps`` steps; the end time of every step."""
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceLoss
    from monai.networks.nets import SegResNet

    torch.manual_seed(args.seed)
    loader = DataLoader(Dataset(files, transform=monai_transforms(patch, args.seed)), batch_size=args.batch_size,
                        shuffle=True, num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    model = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4,
                      out_channels=3, dropout_prob=0.2).to(device)
    loss_fn = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    model.train()
    ends = []
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for batch in itertools.islice(batches, args.steps):
        x, y = batch["image"].to(device), batch["label"].to(device)
        optimizer.zero_grad()
        if scaler is not None:   # the tutorial's AMP path (CUDA only)
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    return ends


# -- glioseg ----------------------------------------------------------------------------------------
def glioseg_run(cache: Path, args, patch, device: torch.device, cpu_kernels: bool, out: Path) -> list[float]:
    """``glioseg.training.trainer.train`` for ``args.steps`` steps (no validation); step end times."""
    from glioseg.models import kernel_choice
    from glioseg.training import trainer as trainer_module
    from glioseg.training.recipe import build_config

    config = build_config("segresnet-brats", None, {
        "precision": args.precision, "epochs": 1, "steps_per_epoch": args.steps, "patch": tuple(patch),
        "batch_size": args.batch_size, "seed": args.seed, "val_fraction": 0.0, "workers": args.workers,
        "device": device.type})
    forced = os.environ.get(kernel_choice.ENV)
    os.environ[kernel_choice.ENV] = "glioseg" if cpu_kernels else "torch"   # torch: no kernel replaced
    record: dict = {}
    try:
        trainer_module.train(config, cache, out, callbacks=[instrument_trainer(record, max_steps=args.steps)])
    except StopTraining:
        pass
    finally:
        if forced is None:
            del os.environ[kernel_choice.ENV]
        else:
            os.environ[kernel_choice.ENV] = forced
        gc.collect()   # the stopped epoch's loader workers exit now, not during the next variant
    return record["step_ends"]


def ensure_cache(data: Path, cache: Path | None, work: Path) -> tuple[Path, float | None]:
    """The glioseg cache of ``data`` and the seconds it took to build (None if it existed)."""
    from glioseg.data.formats import discover
    from glioseg.data.preprocess import PreprocessConfig, load_cache, preprocess_dataset

    target = cache or work / "cache"
    if (target / "cache.json").is_file():
        load_cache(target)
        return target, None
    start = time.perf_counter()
    preprocess_dataset(discover(data), target, PreprocessConfig(), workers=1)
    return target, time.perf_counter() - start


# -- the comparison ---------------------------------------------------------------------------------
def rate(ends: list[float], warmup: int) -> float:
    if len(ends) <= warmup + 1:
        raise ValueError(f"need more than --warmup + 1 = {warmup + 1} steps, got {len(ends)}")
    return (len(ends) - warmup) / (ends[-1] - ends[warmup - 1]) if warmup else \
        (len(ends) - 1) / (ends[-1] - ends[0])


def measure_patch(patch, args, files, cache: Path, device: torch.device, work: Path) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.rounds):
        order = args.variants if r % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            start = time.perf_counter()
            if variant == "monai":
                ends = monai_run(files, args, patch, device)
            else:
                out = work / f"run-{variant}-{'x'.join(map(str, patch))}-{r}"
                ends = glioseg_run(cache, args, patch, device, variant == "glioseg", out)
            rates[variant].append(rate(ends, args.warmup))
            log.info("%s %s round %d: %.3f steps/s (%.0f s with start-up)", variant, patch, r,
                     rates[variant][-1], time.perf_counter() - start)
    return rates


def print_table(results: dict, args, cache_seconds: float | None, n_cases: int) -> None:
    print(f"\nTraining throughput, SegResNet (init 16), batch {args.batch_size}, {args.workers} loader worker(s), "
          f"{torch.get_num_threads()} torch threads, {n_cases} real cases, {args.steps} steps "
          f"(rate over the last {args.steps - args.warmup}), {args.rounds} round(s), median; "
          f"glioseg precision {args.precision}; load average {os.getloadavg()[0]:.1f}")
    head = f"{'patch':>7s} " + " ".join(f"{v + ' steps/s':>23s}" for v in args.variants)
    others = [v for v in args.variants if v != "monai"]
    if "monai" in args.variants:
        head += " " + " ".join(f"{v + '/monai':>22s}" for v in others)
    print(head)
    for patch, rates in results.items():
        med = {v: statistics.median(r) for v, r in rates.items()}
        line = f"{patch:>7s} " + " ".join(f"{med[v]:23.3f}" for v in args.variants)
        if "monai" in args.variants:
            line += " " + " ".join(f"{med[v] / med['monai']:21.2f}x" for v in others)
        print(line)
    if cache_seconds is not None:
        print(f"(one-time glioseg cache build for {n_cases} cases: {cache_seconds:.0f} s, not in the rates)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="BraTS folder (<case>/<case>_flair.nii.gz ...)")
    parser.add_argument("--cache", type=Path, default=None, help="glioseg cache of --data (built if absent)")
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 96, 128], help="cubic patch sizes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (both)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both; default torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="glioseg policy (default fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("glioseg").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")   # Orientationd's labels default
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.amp = device.type == "cuda"
    args.precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    files = monai_files(args.data)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cache, cache_seconds = ensure_cache(args.data, args.cache, Path(tmp))
        results = {"x".join([str(p)] * 3): measure_patch((p, p, p), args, files, cache, device, Path(tmp))
                   for p in args.patch}
    print_table(results, args, cache_seconds, len(files))


if __name__ == "__main__":
    main()
