"""Floating-point operations of one forward pass, counted by PyTorch's FlopCounterMode.

FlopCounterMode counts convolutions, transposed convolutions and matrix products at 2 FLOPs per
multiply-add (tests/models/test_flops.py checks this on a single conv); normalisations,
activations, pooling and softmax are not counted, as is usual for network FLOP figures. The
count can run on the meta device, so a 96³ patch costs no compute and no memory.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glioseg.errors import InputError


def count_flops(model: nn.Module, in_channels: int, patch: Sequence[int], batch: int = 1) -> int:
    """FLOPs of one forward pass of ``model`` (in eval mode) on a (batch, in_channels, *patch) input.

    The input is made on the model's device: build the model under ``torch.device("meta")`` to
    count without computing (``registry.describe`` does).
    """
    if len(patch) != 3 or any(int(s) <= 0 for s in patch):
        raise InputError(f"patch must be three positive sizes (X, Y, Z), got {tuple(patch)}")
    device = next(model.parameters()).device
    x = torch.empty(batch, in_channels, *(int(s) for s in patch), device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
