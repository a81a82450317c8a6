"""glioseg's CPU kernels for a whole network: one call that training, prediction and benchmarks share.

:func:`accelerate_cpu` swaps the classes of a model's dense convolutions (:mod:`cpu_conv`) and
GroupNorms (:mod:`fast_norm`); parameters, ``state_dict`` keys and optimiser state are unchanged,
and anything but eager CPU tensors runs PyTorch's own code. Which GroupNorm implementation runs
is measured per shape on the machine (:mod:`kernel_choice`); ``GLIOSEG_KERNELS=torch`` keeps
PyTorch's kernels everywhere (no class is swapped, every measured choice is torch's).
"""
from __future__ import annotations

from torch import nn

from glioseg.models import kernel_choice
from glioseg.models.cpu_conv import accelerate_cpu_convs
from glioseg.models.fast_norm import accelerate_cpu_norms


def accelerate_cpu(model: nn.Module) -> nn.Module:
    """Give ``model`` glioseg's CPU convolutions and GroupNorms, in place; returns it. Idempotent,
    a no-op for a model on CUDA and under ``GLIOSEG_KERNELS=torch``."""
    if kernel_choice.torch_forced():
        return model
    return accelerate_cpu_norms(accelerate_cpu_convs(model))
