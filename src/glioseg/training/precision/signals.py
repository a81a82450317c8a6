"""Stability signals for the precision controller, from values every step already has.

Pure arithmetic on Python floats (the controller reads the step's loss and gradient norm
from the device once): no tensors, no extra forward or backward pass.

- gradient-norm spike: z-score of ``log(grad_norm)`` against an exponential moving mean and
  variance (gradient norms vary multiplicatively, so the log keeps one scale for the run);
- loss spike: z-score of the loss against its moving mean and variance (instability only where
  :func:`gradient_confirms` it);
- loss curvature: the second difference of the exponentially smoothed loss, as a z-score
  against its own moving statistics (large when the loss curve bends sharply).

Once detection is on (``min_history`` values seen), values beyond the threshold are clipped
before they enter the statistics, so one outlier cannot blind the detector for the next
``window`` steps, while a lasting change of level is still followed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def ema_alpha(window: int) -> float:
    """Weight of the newest value for an EMA whose centre of mass is about ``window/2``."""
    return 2.0 / (window + 1.0)


def second_difference(s0: float, s1: float, s2: float) -> float:
    """Discrete curvature of a smoothed curve at its newest point ``s0`` (older: s1, s2)."""
    return s0 - 2.0 * s1 + s2


def gradient_confirms(threshold: float | None, grad_z: float, grads_finite: bool) -> bool:
    """Whether a loss spike is instability: the gradient norm rose too (its z above ``threshold``),
    or the gradients are non-finite; ``threshold`` None counts every loss spike.

    A precision that breaks the forward pass breaks its gradients with it, while a hard patch
    raises the loss alone: replayed over the 4000-step SegResNet runs (``tools/
    replay_precision_signals.py``), the loss spikes came as often in fp32 as in bf16, at the same
    steps of the data stream in different folds, with gradient-norm z from -3.4 to +2.5.
    """
    return threshold is None or not grads_finite or grad_z > threshold


@dataclass
class RunningStats:
    """Exponentially weighted mean and variance (West's incremental update)."""

    alpha: float
    floor: float = 1e-12        # absolute lower bound of the standard deviation
    rel_floor: float = 0.0      # ... and relative to |mean|
    count: int = 0
    mean: float = 0.0
    var: float = 0.0

    def std(self) -> float:
        return max(math.sqrt(self.var), self.floor, self.rel_floor * abs(self.mean))

    def zscore(self, value: float, floor: float = 0.0) -> float:
        return 0.0 if self.count == 0 else (value - self.mean) / max(self.std(), floor)

    def clip(self, value: float, clip_z: float | None) -> float:
        """``value`` limited to ``mean +- clip_z * std`` (unchanged without statistics)."""
        if clip_z is None or self.count == 0:
            return value
        bound = clip_z * self.std()
        return min(max(value, self.mean - bound), self.mean + bound)

    def update(self, value: float) -> None:
        if self.count == 0:
            self.mean, self.var = value, 0.0
        else:
            diff = value - self.mean
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1.0 - self.alpha) * (self.var + diff * incr)
        self.count += 1


@dataclass(frozen=True)
class Signals:
    """One step's signals; z-scores are 0.0 until ``ready`` (enough history)."""

    grad_z: float
    loss_z: float
    curvature: float
    curvature_z: float
    ready: bool


class SignalTracker:
    """Running statistics of loss, log gradient norm and smoothed-loss curvature."""

    def __init__(self, window: int, min_history: int, smoothing: float,
                 clip_z: tuple[float, float, float] = (6.0, 6.0, 6.0)):
        """``clip_z``: the detection thresholds (gradient, loss, curvature) used for clipping."""
        alpha = ema_alpha(window)
        self.min_history, self.smoothing = min_history, smoothing
        self.grad_clip, self.loss_clip, self.curv_clip = clip_z
        # the spread of log(norm) is taken as at least 0.1, so with z = 6 only a jump of the
        # gradient norm by 1.8x or more can count as a spike
        self.grad = RunningStats(alpha, floor=0.1)
        self.loss = RunningStats(alpha, floor=1e-8, rel_floor=0.02)
        self.curv = RunningStats(alpha, floor=1e-8)
        self.smoothed: list[float] = []   # newest first, at most 3

    @classmethod
    def for_config(cls, config) -> "SignalTracker":
        """The tracker of a controller with ``config`` (a ``PrecisionConfig``): its window, history,
        smoothing, and its detection thresholds for clipping."""
        return cls(config.stats_window, config.min_history, config.smoothing,
                   (config.grad_z, config.loss_z, config.curvature_z))

    def observe(self, loss: float, grad_norm: float) -> Signals:
        """Score this step, then fold it into the statistics. Non-finite values are ignored."""
        ready = min(self.grad.count, self.loss.count) >= self.min_history
        grad_z = loss_z = curvature = curvature_z = 0.0
        if math.isfinite(grad_norm) and grad_norm > 0.0:
            log_norm = math.log(grad_norm)
            grad_z = self.grad.zscore(log_norm) if ready else 0.0
            self.grad.update(self.grad.clip(log_norm, self.grad_clip if ready else None))
        if math.isfinite(loss):
            loss_z = self.loss.zscore(loss) if ready else 0.0
            # the smoothed loss sees the clipped value too: one outlier must not bend the
            # curve (and keep the controller "rough") for the next 1/smoothing steps
            clipped = self.loss.clip(loss, self.loss_clip if ready else None)
            self.loss.update(clipped)
            curvature, curvature_z = self._curvature(clipped, ready)
        return Signals(grad_z, loss_z, curvature, curvature_z, ready)

    def _curvature(self, loss: float, ready: bool) -> tuple[float, float]:
        previous = self.smoothed[0] if self.smoothed else loss
        smooth = previous + self.smoothing * (loss - previous)
        self.smoothed = [smooth] + self.smoothed[:2]
        if len(self.smoothed) < 3:
            return 0.0, 0.0
        curvature = second_difference(*self.smoothed)
        # on a flat stretch the curvature's spread shrinks to rounding noise; measure bends
        # against at least a small fraction of the loss level instead
        floor = 1e-4 * abs(self.loss.mean)
        curvature_z = self.curv.zscore(curvature, floor) if ready else 0.0
        self.curv.update(self.curv.clip(curvature, self.curv_clip if ready else None))
        return curvature, curvature_z

    def state_dict(self) -> dict:
        return {"grad": asdict(self.grad), "loss": asdict(self.loss), "curv": asdict(self.curv),
                "smoothed": list(self.smoothed)}

    def load_state_dict(self, state: dict) -> None:
        self.grad = RunningStats(**state["grad"])
        self.loss = RunningStats(**state["loss"])
        self.curv = RunningStats(**state["curv"])
        self.smoothed = [float(v) for v in state["smoothed"]]
