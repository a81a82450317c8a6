"""``--precision auto`` for prediction: decided by what the device computes natively, never by a timing.

The same command on the same machine must give the same labels every time, also when a killed run
is resumed: labels computed in bf16 differ from fp32's in a few hundred voxels per case, so a
choice that machine load could flip (a timed probe window) would make two runs of one command
disagree and leave a resumed folder mixing precisions. ``auto`` therefore reads only the device's
capability (:func:`glioseg.precisions.auto_levels`, shared with training's probe and the
experiments' verdicts): the first native low precision of
``bf16``, ``fp16`` (AVX512-BF16 or AMX on a CPU; a CUDA GPU's bf16, else its fp16), else fp32.
On a CPU without those units bf16 is emulated 2.5-90x slower than fp32, so fp32 is the only sound
choice there; with them a window runs 1.3-1.8x faster in bf16. Windows whose low-precision logits
are not finite are still re-run in fp32 (:class:`glioseg.inference.predictor.GuardedWindow`),
and the stitching stays fp32. The precision used is recorded in every case's sidecar and in the
case's request, so a resume under another decision recomputes rather than mixes.

Training's ``auto`` starts from the same levels and differs on purpose after that: its controller
times real training steps among them (the paper's method), and a run records its decision in the
checkpoint and reuses it on ``--resume``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from glioseg.precisions import auto_levels, describe_device

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PrecisionChoice:
    """The precision prediction runs in, and why."""

    precision: str
    reason: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason}


def choose_precision(device: torch.device | str) -> PrecisionChoice:
    """``auto`` on ``device``: its first native low precision (bf16, then fp16), else fp32."""
    where = describe_device(device)
    low = auto_levels(device)[1:]   # the capability rule training and experiments share
    if not low:
        return PrecisionChoice("fp32", f"fp32: no native low precision on {where}")
    return PrecisionChoice(low[0], f"{low[0]}: native on {where} (auto follows the device's capability, "
                                   "not a timing, so every run of a command gives the same labels)")
