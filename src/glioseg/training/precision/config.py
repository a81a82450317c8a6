"""Public types of the precision controller: its settings, a step's result, the abort error.

See :mod:`glioseg.training.precision` for the controller and its usage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Sequence

from glioseg import config as config_utils
from glioseg.errors import InputError
from glioseg.precisions import POLICIES, PRECISIONS


# every field a run saved before loss_grad_z joined them (session 20): a saved block holding all of
# these and not loss_grad_z is such a run's
_FIELDS_BEFORE_LOSS_GRAD_Z = (
    "policy", "candidates", "warmup_steps", "calm_steps", "cooldown_steps", "max_failures", "max_nonfinite",
    "stats_window", "min_history", "grad_z", "loss_z", "curvature_z", "smoothing", "init_scale", "scale_floor",
    "max_scaler_skips", "max_grad_norm", "probe_warmup", "probe_steps", "min_speedup", "probe_give_up", "prescreen")


@dataclass(frozen=True)
class PrecisionConfig:
    """Settings of the controller; ``PrecisionConfig.from_dict`` rejects unknown keys.

    In a training config it is the ``precision`` setting: a mapping of these fields, or just the
    policy's name (``precision: bf16``), which keeps every other field at its default.
    """

    shorthand: ClassVar[str] = "policy"

    policy: str = "auto"
    candidates: tuple[str, ...] = PRECISIONS   # levels ``auto`` may consider
    warmup_steps: int = 50          # fp32 steps before the first move to the target
    calm_steps: int = 25            # signal-free steps needed to move faster
    cooldown_steps: int = 100       # first block of a failed level; doubles per failure
    max_failures: int = 4           # failures after which a level is given up for the run
    max_nonfinite: int = 20         # consecutive non-finite steps at the safest level -> error
    stats_window: int = 50          # EMA window of the running statistics (steps)
    min_history: int = 10           # steps of statistics before z-scores are used
    grad_z: float = 6.0             # gradient-norm spike threshold (z of log norm)
    loss_z: float = 6.0             # loss spike threshold
    # a loss spike is instability only where the gradient norm's z also exceeds this (or the
    # gradients are non-finite): a patch that is merely hard raises the loss, not the gradient
    # (None: a loss spike alone falls back, as before session 20)
    loss_grad_z: float | None = 3.0
    curvature_z: float = 6.0        # roughness threshold for the smoothed-loss curvature
    smoothing: float = 0.1          # EMA weight of the smoothed loss
    init_scale: float = 2.0 ** 16   # GradScaler start scale (fp16)
    scale_floor: float = 1.0        # fp16 loss scale below this = collapse
    max_scaler_skips: int = 12      # consecutive fp16 overflow skips = collapse (2**16 -> 16)
    max_grad_norm: float | None = None   # clip to this global norm (None: no clipping)
    probe_warmup: int = 1
    probe_steps: int = 3
    min_speedup: float = 0.05       # a level must be this fraction faster than fp32
    probe_give_up: float = 3.0      # stop probing a level whose step takes this x fp32
    prescreen: bool = True          # rule out levels the device does not compute natively (precisions.auto_levels)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InputError(f"precision policy must be one of {', '.join(POLICIES)}, "
                             f"got {self.policy!r}")
        unknown = [c for c in self.candidates if c not in PRECISIONS]
        if unknown or "fp32" not in self.candidates:
            raise InputError(f"candidates must be a subset of {PRECISIONS} including fp32, "
                             f"got {tuple(self.candidates)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise InputError(f"precision setting {f.name} must be >= 0, got {value}")
        ones = ("calm_steps", "stats_window", "probe_steps", "max_nonfinite", "max_failures")
        if min(getattr(self, name) for name in ones) < 1:
            raise InputError(f"precision settings {', '.join(ones)} must be >= 1")
        if not (0.0 < self.smoothing <= 1.0 and self.min_speedup < 1.0
                and self.probe_give_up >= 1.0):
            raise InputError("precision settings need 0 < smoothing <= 1, min_speedup < 1 and "
                             f"probe_give_up >= 1, got {self.smoothing}, {self.min_speedup}, "
                             f"{self.probe_give_up}")

    def __str__(self) -> str:
        """The policy, and the settings that differ from the defaults: ``auto (warmup_steps=8)``."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                   if f.name != "policy" and getattr(self, f.name) != f.default]
        return self.policy + (f" ({', '.join(changed)})" if changed else "")

    @staticmethod
    def upgrade_saved(block: dict[str, Any]) -> dict[str, Any]:
        """A run's saved ``precision`` block as what the run trained with: runs saved every field,
        and one saved before ``loss_grad_z`` existed fell back on a loss spike alone (``None``),
        not on the later default's confirmed spikes. A partial block (a user's file) is unchanged."""
        if "loss_grad_z" in block or not set(_FIELDS_BEFORE_LOSS_GRAD_Z) <= block.keys():
            return block
        return {**block, "loss_grad_z": None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrecisionConfig":
        return config_utils.from_dict(cls, dict(data), "precision")


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`PrecisionController.step` did."""

    skipped: bool               # the optimizer update was not applied
    precision: str              # precision this step ran in
    next_precision: str         # precision of the next step
    loss: float                 # the loss value (may be nan/inf on a skipped step)
    grad_norm: float            # global L2 gradient norm after unscaling (before clipping)
    scale: float                # fp16 loss scale used (1.0 otherwise)
    event: dict | None          # the decision taken at this step, if any


class NonFiniteTrainingError(RuntimeError):
    """Training produced non-finite values ``count`` steps in a row even at the safest level.

    ``cases`` lists the case ids of those steps' batches when the trainer passed them to
    :meth:`PrecisionController.step` (newest last).
    """

    def __init__(self, count: int, step: int, precision: str, cases: Sequence[str] = ()):
        self.count, self.step, self.precision, self.cases = count, step, precision, list(cases)
        where = f"; batches held case(s) {', '.join(self.cases)}" if self.cases else ""
        super().__init__(f"{count} consecutive steps with non-finite loss or gradients in "
                         f"{precision} (steps {step - count + 1}-{step}); training cannot go on "
                         f"(check normalisation, learning rate and the input data){where}")


def json_value(value: float) -> float | str:
    """Events go to JSON: non-finite floats become the strings 'nan', 'inf', '-inf'."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
