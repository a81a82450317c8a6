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

# Each loss and the output space it trains (data.output_space.TARGETS).
LOSSES: dict[str, str] = {"dice": "regions", "dice_bce": "regions", "dice_ce": "classes"}


class SegmentationLoss(nn.Module):
    """Loss over logits ``(B, K, X, Y, Z)``.

    - ``dice`` with region targets ``(B, 3, X, Y, Z)`` in {0, 1}: sigmoid Dice per region
      (the SegResNet BraTS recipe: smooth_nr 0, smooth_dr 1e-5, squared_pred).
    - ``dice_bce``: the same Dice + ``ce_weight`` × binary cross-entropy per region voxel
      (nnU-Net's region-based BraTS training); the BCE term keeps a gradient on voxels that
      the Dice of a small region (ET) barely sees.
    - ``dice_ce`` with class targets ``(B, X, Y, Z)`` int64: softmax Dice + ``ce_weight`` ×
      cross-entropy (DALight-3D: 0.5).

    MONAI's ``DiceCELoss(sigmoid=True)`` is not ``dice_bce``: with more than one channel it
    takes the softmax cross-entropy, which treats nested regions as exclusive classes.
    """

    def __init__(self, kind: str = "dice", ce_weight: float = 0.5):
        super().__init__()
        if kind not in LOSSES:
            raise InputError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
        self.kind, self.ce_weight = kind, ce_weight
        if kind == "dice_ce":
            self.fn = DiceCELoss(softmax=True, to_onehot_y=True, lambda_dice=1.0, lambda_ce=ce_weight)
        else:
            self.fn = DiceLoss(smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True, sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss() if kind == "dice_bce" else None

    @property
    def target(self) -> str:
        """The output space the sampler's targets and the network's channels must be."""
        return LOSSES[self.kind]

    def forward(self, logits: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (tuple, list)):
            return self._deep_supervision(logits, target)
        logits = logits.float()
        if self.kind == "dice_ce":
            return self.fn(logits, target.unsqueeze(1))
        target = target.float()
        loss = self.fn(logits, target)
        if self.bce is not None:
            loss = loss + self.ce_weight * self.bce(logits, target)
        return loss

    def _deep_supervision(self, outputs, target: torch.Tensor) -> torch.Tensor:
        """nnU-Net's deep supervision: output k (at 1/2^k resolution) scored against the target
        subsampled by 2^k (nearest neighbour: every 2^k-th voxel), weights 1/2^k normalised to 1."""
        weights = [0.5 ** k for k in range(len(outputs))]
        total = 0.0
        for k, (out, w) in enumerate(zip(outputs, weights)):
            step = 2 ** k
            sub = target[..., ::step, ::step, ::step]
            if sub.shape[-3:] != out.shape[-3:]:
                raise InputError(f"deep supervision output {k} has shape {tuple(out.shape[-3:])}, "
                                 f"the target subsampled by {step} {tuple(sub.shape[-3:])}")
            total = total + w * self(out, sub)
        return total / sum(weights)
