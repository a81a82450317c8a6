"""One optimiser update: the trainer's mechanics around the precision controller's decisions.

As in nnU-Net's and MONAI's loops, the loop does the mechanics (backward, unscale, gradient norm,
clipping, ``optimizer.step``, clearing the gradients) and the AMP object only scales; the
:class:`~glioseg.training.precision.PrecisionController` decides: it scales the loss under fp16,
judges the step from its loss and gradient norm (apply the update or skip it) and picks the next
step's precision. Gradient accumulation or an EMA of the weights belong here, beside
``optimizer.step``, not in the controller. The order of the operations is the one a resumed run
must repeat bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import torch

from glioseg.training.precision import PrecisionController, StepResult


def optimizer_update(controller: PrecisionController, loss: torch.Tensor, params: Sequence[torch.nn.Parameter],
                     optimizer: torch.optim.Optimizer, *, max_grad_norm: float | None = None,
                     cases: Sequence[str] | None = None) -> StepResult:
    """Backward (scaled under fp16), measure, let the controller judge, clip and apply (or skip)
    the update, clear the gradients (``set_to_none``), and let the controller conclude the step.

    ``params``: the model's parameters, listed once by the caller (walking the module tree every
    step costs more than all the controller's signals); ``max_grad_norm``: clip to this global
    L2 norm (None: no clipping); ``cases``: the batch's case ids, for the error of a run that
    cannot go on."""
    controller.scale(loss).backward()
    controller.unscale_(optimizer)
    grads = [p for p in params if p.grad is not None]
    norm = (torch.nn.utils.get_total_norm([p.grad for p in grads], foreach=True)
            if grads else torch.zeros((), device=loss.device))
    decision = controller.review(loss, norm)
    if decision.apply:
        if max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, max_grad_norm, norm, foreach=True)
        optimizer.step()
    for param in params:
        param.grad = None
    return controller.conclude(decision, cases=cases)
