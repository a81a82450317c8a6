"""Training losses, always evaluated in fp32.

Low-precision losses are silently wrong: MONAI's DiceLoss on fp16 probabilities at 128³
returns exactly 1.0 where the true value is 0.756 (a sum overflows), so logits are cast to
float32 before any loss, whatever precision the forward pass ran in.
"""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from glioseg.errors import InputError

LOSSES = ("dice", "dice_ce")


class SegmentationLoss(nn.Module):
    """Loss over logits ``(B, K, X, Y, Z)``.

    - ``dice`` with region targets ``(B, 3, X, Y, Z)`` in {0, 1}: sigmoid Dice per region
      (the SegResNet BraTS recipe: smooth_nr 0, smooth_dr 1e-5, squared_pred).
    - ``dice_ce`` with class targets ``(B, X, Y, Z)`` int64: softmax Dice + ``ce_weight`` ×
      cross-entropy (DALight-3D: 0.5).
    """

    def __init__(self, kind: str = "dice", ce_weight: float = 0.5):
        super().__init__()
        if kind not in LOSSES:
            raise InputError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
        self.kind = kind
        if kind == "dice":
            self.fn = DiceLoss(smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True, sigmoid=True)
        else:
            self.fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=1.0, lambda_ce=ce_weight)

    @property
    def target(self) -> str:
        """The target kind the sampler must produce: ``regions`` or ``classes``."""
        return "regions" if self.kind == "dice" else "classes"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "dice":
            return self.fn(logits, target.float())
        return self.fn(logits, target.unsqueeze(1))
