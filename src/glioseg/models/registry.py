"""The one place network names live: ``create(name, ...)``, ``list_models()``, ``glioseg models``.

Every network takes (B, in_channels, X, Y, Z) float input and returns logits (B, out_channels, X,
Y, Z) (no softmax/sigmoid inside); X, Y, Z must be multiples of the network's ``size_divisor``
(a clear ValueError otherwise). Every network class declares ``takes_ids``; those where it is True
(the DALight-3D variants) also take ``ids``: LongTensor (B,) of acquisition-group indices, or None.
:func:`takes_ids` is where callers read it.
Options are the fields of each network's frozen config dataclass; an unknown option, or an
ablation switch that the chosen name already fixes, is a ValueError listing the valid ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from glioseg.config import from_dict
from glioseg.errors import InputError
from glioseg.models.dalight3d import DALight3D, DALightConfig
from glioseg.models.flops import count_flops
from glioseg.models.segresnet import SegResNet3D, SegResNetConfig
from glioseg.models.unets import AttentionUNet3D, AttentionUNetConfig, ResidualUNetConfig, UNet3D, UNetConfig
from glioseg.models.vnet import VNet3D, VNetConfig


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: its class, its config dataclass, options the name fixes, a description."""

    name: str
    network: Callable[..., nn.Module]
    config: type
    description: str
    fixed: dict[str, Any] = field(default_factory=dict)


_SPECS = (
    ModelSpec("segresnet", SegResNet3D, SegResNetConfig,
              "MONAI SegResNet, BraTS recipe (init 16, blocks 1-2-2-4 / 1-1-1, dropout 0.2)"),
    ModelSpec("dalight3d", DALight3D, DALightConfig,
              "DALight-3D: SepConv, IdNorm, CSA, SSFB skips (arXiv 2605.04518)"),
    ModelSpec("dalight3d-no-sepconv", DALight3D, DALightConfig,
              "DALight-3D ablation: full 3x3x3 convs in E1-E3 and the decoder", {"separable": False}),
    ModelSpec("dalight3d-no-idnorm", DALight3D, DALightConfig,
              "DALight-3D ablation: affine GroupNorm instead of IdNorm", {"id_norm": False}),
    ModelSpec("dalight3d-no-csa", DALight3D, DALightConfig,
              "DALight-3D ablation: no cross-slice attention in E2/E3", {"csa": False}),
    ModelSpec("dalight3d-no-ssfb", DALight3D, DALightConfig,
              "DALight-3D ablation: SimpleSkip at every decoder level", {"ssfb": False}),
    ModelSpec("unet3d", UNet3D, UNetConfig, "MONAI UNet, channels 40-80-160-320, no residual units"),
    ModelSpec("attention_unet3d", AttentionUNet3D, AttentionUNetConfig,
              "MONAI AttentionUnet, channels 24-48-96-192"),
    ModelSpec("residual_unet3d", UNet3D, ResidualUNetConfig,
              "MONAI UNet, channels 26-52-104-208, 2 residual units per level"),
    ModelSpec("vnet", VNet3D, VNetConfig, "compact V-Net: 3x3x3 residual stages 20-40-80-160, InstanceNorm"),
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    """Registered names, in registry order."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name]


def make_config(name: str, **options: Any):
    """The frozen config of ``name`` with ``options`` applied; unknown or fixed options are errors."""
    spec = get_spec(name)
    return from_dict(spec.config, options, f"model {name!r} options", fixed=spec.fixed)


def create(name: str, in_channels: int = 4, out_channels: int = 3, **options: Any) -> nn.Module:
    """Build the network ``name``: (B, in_channels, X, Y, Z) → logits (B, out_channels, X, Y, Z)."""
    if in_channels < 1 or out_channels < 1:
        raise InputError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    return get_spec(name).network(in_channels, out_channels, make_config(name, **options))


def takes_ids(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``ids`` beside the image, as its network class declares
    (a module that declares nothing, such as a test's stand-in, takes none)."""
    return bool(getattr(model, "takes_ids", False))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(name: str, patch=(96, 96, 96), in_channels: int = 4, out_channels: int = 3,
             **options: Any) -> dict[str, Any]:
    """{name, params, flops, size_divisor, description} of one network for one patch."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = create(name, in_channels, out_channels, **options)
    flops = count_flops(model, in_channels, patch)
    return {"name": name, "params": count_parameters(model), "flops": flops,
            "size_divisor": model.size_divisor, "description": spec.description}
