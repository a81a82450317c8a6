"""Patch throughput of one DataLoader worker next to one SegResNet training step.

Data loading must never be what training waits for: for each patch size this prints how many
patches per second one worker delivers from memory-mapped .npy volumes, and the time of one
SegResNet (MONAI BraTS recipe configuration) forward + backward + Adam step on a batch of one such
patch. The ratio is how many patches one worker prepares in the time of one step (> 1: the
worker keeps up with batch size 1). "item CPU ms" is the CPU time of one item made in the main
process (slice, copy, augment, target; no hand-over between processes).

    python benchmarks/bench_patches.py --cache CACHE             # a `glioseg preprocess` cache
    python benchmarks/bench_patches.py --from-raw ../shared/data/brats18 --cases 4

``--from-raw`` builds a small stand-in cache (RAS, cropped to the brain, z-scored per channel) in
a temporary folder, for use before a real cache exists.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from glioseg.data.augment import AugmentConfig
from glioseg.data.formats import CHANNELS, discover
from glioseg.data.sampling import PatchDataset, SamplerConfig, Volume, make_loader


def stand_in_cache(raw: Path, out: Path, cases: int) -> list[Volume]:
    """Minimal preprocessing of the first ``cases`` cases into ``out/<case>/{image,label}.npy``."""
    volumes = []
    for case in discover(raw).cases[:cases]:
        channels = [np.asarray(nib.as_closest_canonical(nib.load(case.images[c])).dataobj, np.float32)
                    for c in CHANNELS]
        image = np.stack(channels)
        label = np.asarray(nib.as_closest_canonical(nib.load(case.label)).dataobj).astype(np.uint8)
        brain = (image != 0).any(axis=0)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))
        image, label, brain = image[(slice(None), *box)], label[box], brain[box]
        for c in range(len(image)):
            values = image[c][brain]
            image[c] = np.where(brain, (image[c] - values.mean()) / max(values.std(), 1e-6), 0)
        folder = out / case.case_id
        folder.mkdir(parents=True)
        np.save(folder / "image.npy", image)
        np.save(folder / "label.npy", label)
        volumes.append(Volume(case.case_id, np.load(folder / "image.npy", mmap_mode="r"),
                              np.load(folder / "label.npy", mmap_mode="r"), -1))
    return volumes


def cache_volumes(path: Path) -> tuple[list[Volume], object]:
    try:
        from glioseg.data.cache import load_cache
    except ImportError:
        from glioseg.data.preprocess import load_cache
    cache = load_cache(path)
    return [Volume(c, cache.image(c), cache.label(c), -1) for c in cache.case_ids], cache.scheme


def patches_per_second(volumes, scheme, patch: int, samples: int, seed: int) -> tuple[float, float]:
    """One worker, batch 1, default augmentation, nnU-Net foreground share; the first batch
    (worker start, foreground indexing) is excluded. Also the CPU time of making one item in
    this process (no worker hand-over), which depends less on other load on the machine."""
    config = SamplerConfig(patch_size=(patch,) * 3, samples_per_epoch=samples + 1)
    dataset = PatchDataset(volumes, scheme, config, AugmentConfig(), seed)
    batches = iter(make_loader(dataset, batch_size=1, workers=1))
    next(batches)
    started = time.perf_counter()
    for _ in batches:
        pass
    rate = samples / (time.perf_counter() - started)
    cpu = time.process_time()
    for i in range(1, samples + 1):
        dataset[i]
    return rate, (time.process_time() - cpu) / samples


def segresnet_step_seconds(patch: int, repeats: int, device: torch.device) -> float:
    """Median time of forward + backward + Adam step on a (1, 4, p, p, p) batch, after one warm-up."""
    from monai.losses import DiceLoss
    from monai.networks.nets import SegResNet

    model = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                      out_channels=3, dropout_prob=0.2).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    loss_fn = DiceLoss(sigmoid=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, patch, patch, patch), generator=gen).to(device)
    y = (torch.rand((1, 3, patch, patch, patch), generator=gen) > 0.9).float().to(device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", type=Path, help="a cache folder written by glioseg preprocess")
    source.add_argument("--from-raw", type=Path, help="a BraTS dataset to build a temporary stand-in cache from")
    parser.add_argument("--cases", type=int, default=4, help="cases for --from-raw")
    parser.add_argument("--patches", type=int, nargs="+", default=[128, 96])
    parser.add_argument("--samples", type=int, default=12, help="patches timed per size")
    parser.add_argument("--repeats", type=int, default=2, help="SegResNet steps timed per size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-patches-") as tmp:
        if args.cache:
            volumes, scheme = cache_volumes(args.cache)
        else:
            volumes, scheme = stand_in_cache(args.from_raw, Path(tmp), args.cases), "brats"
        shapes = sorted({v.image.shape[1:] for v in volumes})
        print(f"{len(volumes)} cases, volume shapes {shapes[0]}..{shapes[-1]}; torch threads "
              f"{torch.get_num_threads()}, SegResNet on {device}")
        print(f"{'patch':>7} {'patches/s':>10} {'ms/patch':>9} {'item CPU ms':>12} {'SegResNet step s':>17} "
              f"{'ratio':>7}")
        for patch in args.patches:
            rate, cpu = patches_per_second(volumes, scheme, patch, args.samples, seed=0)
            step = segresnet_step_seconds(patch, args.repeats, device)
            print(f"{patch:>6}³ {rate:>10.2f} {1000 / rate:>9.1f} {1000 * cpu:>12.1f} {step:>17.3f} "
                  f"{step * rate:>7.1f}")


if __name__ == "__main__":
    main()
