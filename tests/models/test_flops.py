"""FLOP counting: 2 per multiply-add, computed on the meta device."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from glioseg.models import create, describe
from glioseg.models.flops import count_flops


def test_a_conv_counts_two_flops_per_multiply_add():
    with torch.device("meta"):
        conv = nn.Conv3d(4, 8, 3, padding=1)
    macs = 8 * 8 * 6 * 8 * 4 * 27                  # output voxels × C_out × C_in × kernel
    assert count_flops(conv, 4, (8, 8, 6)) == 2 * macs


def test_a_fully_convolutional_net_scales_with_the_voxel_count():
    with torch.device("meta"):
        model = create("unet3d", base_width=8)
    assert count_flops(model, 4, (32, 32, 32)) == 8 * count_flops(model, 4, (16, 16, 16))


def test_counting_leaves_the_training_mode_alone():
    with torch.device("meta"):
        model = create("dalight3d", base_width=8, bottleneck_width=16, head_width=8).train()
    count_flops(model, 4, (16, 16, 16))
    assert model.training


def test_describe_counts_a_full_size_patch_without_computing():
    row = describe("dalight3d", (96, 96, 96), out_channels=4)      # meta device: instant
    assert row["params"] == 2_219_074 and row["flops"] > 1e11


@pytest.mark.parametrize("patch", [(8, 8), (0, 8, 8)])
def test_bad_patches_are_rejected(patch):
    with pytest.raises(ValueError, match="three positive sizes"):
        count_flops(nn.Conv3d(1, 1, 1), 1, patch)
