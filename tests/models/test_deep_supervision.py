"""SegResNet's deep supervision: extra decoder outputs while training only, the main path MONAI's
unchanged, nnU-Net's weighting of the losses, and a run that trains, checkpoints and predicts."""
from __future__ import annotations

import pytest
import torch

from glioseg.errors import InputError
from glioseg.models.registry import create, make_config
from glioseg.training.losses import SegmentationLoss


def _pair(ds: int):
    torch.manual_seed(0)
    plain = create("segresnet", init_filters=8, dropout=0.0)
    deep = create("segresnet", init_filters=8, dropout=0.0, deep_supervision=ds)
    missing, unexpected = deep.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("ds_heads.") for k in missing) and len(missing) == 2 * ds
    return plain, deep


@pytest.mark.parametrize("ds", [1, 2])
def test_training_adds_coarser_outputs_and_leaves_the_main_one_monais(ds, one_thread):
    plain, deep = _pair(ds)
    x = torch.randn(1, 4, 32, 32, 32)
    outputs = deep.train()(x)
    assert isinstance(outputs, tuple) and [o.shape[-1] for o in outputs] == [32, 16, 8][:ds + 1]
    assert all(o.shape[:2] == (1, 3) for o in outputs)
    torch.testing.assert_close(outputs[0], plain.train()(x))
    with torch.no_grad():   # prediction, validation, export: one tensor, as without the heads
        torch.testing.assert_close(deep.eval()(x), plain.eval()(x))


def test_the_loss_weights_the_outputs_like_nnunet(one_thread):
    loss = SegmentationLoss("dice_bce", 1.0)
    target = (torch.rand(1, 3, 16, 16, 16) > 0.7).float()
    outputs = tuple(torch.randn(1, 3, s, s, s) for s in (16, 8, 4))
    expected = (loss(outputs[0], target) + 0.5 * loss(outputs[1], target[..., ::2, ::2, ::2])
                + 0.25 * loss(outputs[2], target[..., ::4, ::4, ::4])) / 1.75
    torch.testing.assert_close(loss(outputs, target), expected)
    classes = SegmentationLoss("dice_ce", 0.5)
    labels = torch.randint(0, 4, (1, 16, 16, 16))
    assert torch.isfinite(classes((torch.randn(1, 4, 16, 16, 16), torch.randn(1, 4, 8, 8, 8)), labels))
    with pytest.raises(InputError, match=r"deep supervision output 1 has shape \(5, 5, 5\)"):
        loss((outputs[0], torch.randn(1, 3, 5, 5, 5)), target)


def test_every_head_gets_a_gradient(one_thread):
    _, deep = _pair(2)
    y = (torch.rand(1, 3, 32, 32, 32) > 0.5).float()
    SegmentationLoss("dice_bce", 1.0)(deep.train()(torch.randn(1, 4, 32, 32, 32)), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.ds_heads.parameters())


def test_only_one_or_two_extra_outputs():
    with pytest.raises(InputError, match="deep_supervision must be 0, 1 or 2"):
        make_config("segresnet", deep_supervision=3)
