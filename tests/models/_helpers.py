"""Helpers for the model tests: tiny widths so every network runs in well under a second."""
from __future__ import annotations

import torch

from glioseg.models import create

TINY_DALIGHT = {"base_width": 8, "bottleneck_width": 32, "head_width": 16}
TINY = {
    "segresnet": {"init_filters": 8},
    "unet3d": {"base_width": 8},
    "attention_unet3d": {"base_width": 8},
    "residual_unet3d": {"base_width": 8},
    "vnet": {"base_width": 8},
}


def tiny_options(name: str) -> dict:
    return TINY.get(name, TINY_DALIGHT if name.startswith("dalight3d") else {})


def build_tiny(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    """The tiny variant of ``name`` with weights from ``seed`` (global RNG restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create(name, **tiny_options(name), **extra)


def call(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Forward with ``ids`` for the networks that take them."""
    return model(x, ids) if model.takes_ids else model(x)


def inputs(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
