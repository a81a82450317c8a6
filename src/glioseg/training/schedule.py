"""Optimisers and the learning-rate schedule.

The cosine schedule is a pure function of the optimiser step and the planned total, so a
resumed run (even with a larger ``--epochs``) needs no scheduler state beyond the step.
"""
from __future__ import annotations

import math

import torch

from glioseg.errors import InputError

OPTIMIZERS = ("adam", "adamw")


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise InputError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def cosine_factor(step: int, total_steps: int, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """LR multiplier at ``step``: linear warm-up, then cosine from 1 down to ``floor`` at ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
