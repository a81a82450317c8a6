"""Full training state for checkpoints: everything an exact resume and a prediction need.

Values are tensors and plain Python only, so checkpoints load with
``torch.load(weights_only=True)``. The model weights appear once on disk even though both
``model`` and ``bundle`` refer to them: ``torch.save`` stores shared tensors once.
"""
from __future__ import annotations

import platform

import monai
import nibabel
import numpy as np
import torch

import glioseg
from glioseg.errors import InputError
from glioseg.inference.bundle import ModelBundle
from glioseg.models import kernel_choice
from glioseg.training.rng import capture_rng_state, restore_rng_state

FORMAT = "glioseg-checkpoint/1"


def versions() -> dict[str, str]:
    return {"glioseg": glioseg.__version__, "torch": str(torch.__version__), "monai": str(monai.__version__),
            "nibabel": nibabel.__version__, "numpy": np.__version__, "python": platform.python_version()}


def build_bundle(trainer) -> ModelBundle:
    """What prediction needs from this run: the network, its inputs and its outputs."""
    config, data = trainer.config, trainer.data
    return ModelBundle(
        model=config.model, options=dict(config.model_options),
        in_channels=len(data.channels), out_channels=trainer.output.channels,
        target=trainer.output.target, channels=data.channels, scheme=trainer.output.scheme.name,
        preprocess=dict(data.cache.config), site_index=dict(data.sites), patch_size=tuple(config.patch),
        weights=trainer.model.state_dict(), trained_spacing=data.spacing(),
    )


def run_state(trainer) -> dict:
    return {
        "format": FORMAT,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "controller": trainer.controller.state_dict(),
        "schedule": {"kind": "cosine", "total_steps": trainer.total_steps,
                     "warmup_steps": trainer.config.warmup_steps},
        "progress": {"step": trainer.step, "epoch": trainer.epoch, "position": trainer.position,
                     "best": trainer.best, "epoch_losses": list(trainer.epoch_losses),
                     "epoch_skipped": trainer.epoch_skipped},
        "rng": capture_rng_state(),
        "config": trainer.config.to_dict(),
        "split": trainer.data.split,
        "sites": dict(trainer.data.sites),
        "scheme": trainer.data.scheme.to_dict(),
        "channels": list(trainer.data.channels),
        "preprocess": dict(trainer.data.cache.config),
        "versions": versions(),
        # the kernels measured fastest on this machine: a resumed run computes with the same ones
        "kernels": kernel_choice.decisions(),
        "bundle": build_bundle(trainer).to_state(),
    }


def restore_state(trainer, state: dict) -> None:
    """Put a checkpoint back into ``trainer``; refuses one of another model or label scheme."""
    if state.get("format") != FORMAT:
        raise InputError(f"checkpoint format {state.get('format')!r} is not {FORMAT!r}")
    if state["config"]["model"] != trainer.config.model:
        raise InputError(f"checkpoint is of model {state['config']['model']!r}, the run is {trainer.config.model!r}")
    if state["scheme"]["name"] != trainer.data.scheme.name:
        raise InputError(f"checkpoint label scheme {state['scheme']['name']!r} differs from the data's "
                         f"{trainer.data.scheme.name!r}")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.controller.load_state_dict(state["controller"])
    progress = state["progress"]
    trainer.step, trainer.epoch = int(progress["step"]), int(progress["epoch"])
    trainer.position, trainer.best = int(progress["position"]), float(progress["best"])
    trainer.epoch_losses = [float(v) for v in progress["epoch_losses"]]
    trainer.epoch_skipped = int(progress["epoch_skipped"])
    restore_rng_state(state["rng"])
    kernel_choice.restore(state.get("kernels"))   # absent in checkpoints of earlier versions
