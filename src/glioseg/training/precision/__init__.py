"""Automatic multi-precision training, one concept per module:

- ``config``      :class:`PrecisionConfig` (the policy and every threshold), :class:`StepResult`;
- ``probe``       what the device can autocast in, timing real steps, ranking levels;
- ``signals``     z-scores of the loss and gradient norm (spikes, roughness);
- ``ladder``      the levels between the target and fp32, cool-downs and given-up levels;
- ``controller``  :class:`PrecisionController`: the decisions (level, apply or skip) and their events.

The names below are the package's interface (``from glioseg.training.precision import ...``).
"""
from glioseg.training.precision.config import (POLICIES, NonFiniteTrainingError, PrecisionConfig,
                                               StepResult)
from glioseg.training.precision.controller import PrecisionController, realised_speed
from glioseg.training.precision.probe import supported_precisions
from glioseg.precisions import PRECISIONS

__all__ = ["PrecisionController", "PrecisionConfig", "StepResult", "NonFiniteTrainingError",
           "POLICIES", "PRECISIONS", "supported_precisions", "realised_speed"]
