import math

import pytest
import torch

from glioseg.training.losses import SegmentationLoss
from glioseg.training.schedule import cosine_factor, make_optimizer


def test_region_dice_perfect_and_wrong():
    loss = SegmentationLoss("dice")
    target = torch.zeros(1, 3, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert loss(perfect, target).item() < 1e-3
    assert loss(-perfect, target).item() > 0.99


def test_loss_is_fp32_even_for_half_logits():
    loss = SegmentationLoss("dice")
    target = torch.ones(1, 3, 4, 4, 4)
    value = loss(torch.full((1, 3, 4, 4, 4), 10.0, dtype=torch.bfloat16), target)
    assert value.dtype == torch.float32


def test_dice_ce_classes():
    loss = SegmentationLoss("dice_ce", ce_weight=0.5)
    assert loss.target == "classes"
    target = torch.randint(0, 4, (1, 6, 6, 6))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 4, 1, 2, 3).float() * 40
    assert loss(logits, target).item() < 1e-2


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        SegmentationLoss("focal")


def test_cosine_schedule_shape():
    assert cosine_factor(0, 100) == 1.0
    assert math.isclose(cosine_factor(50, 100), 0.5)
    assert cosine_factor(100, 100) == 0.0
    assert cosine_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        cosine_factor(0, 0)


def test_optimizers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("adamw", p, 1e-3, 0.0), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", p, 1e-3, 0.0)


def test_dice_bce_is_the_region_dice_plus_weighted_bce():
    target = torch.zeros(1, 3, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1
    target[:, 2, 2:4] = 0                         # ET smaller than TC: nested, not exclusive
    logits = torch.randn(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    both = SegmentationLoss("dice_bce", ce_weight=0.5)
    assert both.target == "regions"
    dice = SegmentationLoss("dice")(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(both(logits, target), dice + 0.5 * bce)
    perfect = (target * 2 - 1) * 50
    assert both(perfect, target).item() < 1e-3
