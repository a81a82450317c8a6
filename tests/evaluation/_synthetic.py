"""Helpers shared by the evaluation tests: tiny synthetic BraTS cases and run folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from glioseg.run_io import RunFiles
from tests._cases import CHANNEL_NAMES, write_case_files

LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def blob(shape, rng: np.random.Generator, centre, radius) -> np.ndarray:
    """A boolean ellipsoid with a smoothly bumpy surface (no stray voxels), seeded."""
    grid = np.indices(shape).astype(float)
    dist = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return dist + 0.12 * noise / noise.std() < 1.0


def write_brats_case(root: Path, case: str, label: np.ndarray, affine=LPS, seed: int = 0,
                     label_dtype=np.uint8) -> Path:
    """One BraTS-layout case folder with smooth random images and the given label."""
    rng = np.random.default_rng(seed)
    brain = blob(label.shape, rng, [s / 2 for s in label.shape], [s / 2.4 for s in label.shape])
    channels = {channel: (brain * (300 + 50 * rng.standard_normal(label.shape)) + 200 * (label > 0)).astype(np.int16)
                for channel in CHANNEL_NAMES}
    return write_case_files(root, case, channels, label, affine, label_dtype=label_dtype)


def brats_label(shape, rng: np.random.Generator, centre) -> np.ndarray:
    """Nested BraTS labels: edema 2 around core 1 around enhancing 4."""
    radius = np.array([s / 5 for s in shape])
    label = np.zeros(shape, dtype=np.uint8)
    label[blob(shape, rng, centre, radius)] = 2
    label[blob(shape, rng, centre, radius * 0.6)] = 1
    label[blob(shape, rng, centre, radius * 0.3)] = 4
    return label


def write_run(run_dir: Path, epochs: int = 6, events: bool = True) -> Path:
    """A training run folder: metrics.csv (validation every 2nd epoch) and precision events."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = RunFiles(run_dir)
    lines = ["epoch,train_loss,val_dice_wt,val_dice_tc,val_dice_et,precision,seconds"]
    for e in range(1, epochs + 1):
        val = f"{0.5 + e / 20:.3f},{0.4 + e / 20:.3f},{0.3 + e / 20:.3f}" if e % 2 == 0 else ",,"
        lines.append(f"{e},{1 / e:.4f},{val},{'fp32' if e < 3 else 'bf16'},{10 + e}")
    files.metrics.write_text("\n".join(lines) + "\n")
    if events:
        rows = [{"step": 40, "from": "fp32", "to": "bf16", "signal": "calm", "value": 0.1},
                {"step": 95, "from": "bf16", "to": "fp32", "signal": "grad_norm_z", "value": 7.5},
                {"step": 160, "from": "fp32", "to": "bf16", "signal": "calm", "value": 0.2}]
        files.events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir
