"""Fixtures of the experiment tests: six phantom cases (three sites), a tiny two-arm spec, one thread.

The spec trains two networks (SegResNet with 8 filters, a 3D U-Net of width 4) for 4 steps of
16³ patches on each of 2 folds and scores the 3 held-out whole 48×48×40 cases of each fold.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from glioseg.data.phantom import write_dataset

TINY_ARM = {"recipe": "segresnet-brats", "overrides": {"patch": [16, 16, 16], "precision": "fp32",
                                                        "val_fraction": 0.34, "val_overlap": 0.25}}
TINY_SPEC = {
    "name": "tiny", "description": "two tiny arms on phantoms",
    "folds": {"k": 2, "seed": 0}, "seeds": [0], "reference": "small",
    "arms": [{"name": "small", "model": "segresnet", "model_options": {"init_filters": 8}, **TINY_ARM},
             {"name": "unet", "model": "unet3d", "model_options": {"base_width": 4}, **TINY_ARM}],
    "budgets": {"cpu": {"steps": 4, "steps_per_epoch": 2, "val_every": 1, "device": "cpu", "workers": 0}},
    "evaluation": {"window": "box", "checkpoint": "best", "bootstrap": 200, "target_dice": 0.1},
}


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    """Six 48×48×40 phantom cases in the BraTS layout, two per site (read by every test, never written)."""
    root = tmp_path_factory.mktemp("experiment-phantoms") / "raw"
    write_dataset(root, cases=6, seed=0, shape=(48, 48, 40))
    return root


@pytest.fixture
def write_spec(tmp_path, phantom_data):
    """``write_spec(**changes)`` → a spec file: :data:`TINY_SPEC` on the phantoms, top-level keys replaced."""
    def write(name: str = "spec.yaml", **changes) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**TINY_SPEC, "data": str(phantom_data), **changes}, sort_keys=False))
        return path

    return write

