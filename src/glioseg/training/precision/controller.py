"""Automatic multi-precision training: pick fp32 / bf16 / fp16 per phase, fall back on trouble.

Specification: the design note precision.md (outside this repository). Policies: ``fp32``,
``bf16``, ``fp16`` (fixed, never switch; fp16 always with dynamic loss scaling) and ``auto``:

1. **probe** (once, at start-up): levels the device does not compute natively are ruled out
   first (``glioseg.precisions.auto_levels``, the rule prediction's auto and the experiments
   share: an emulated level's single step could cost minutes); then a few real training steps
   are timed at each remaining level, and the fastest one that is at least ``min_speedup``
   faster than fp32 becomes the *target* (fp32 when none is, as on AVX2-only CPUs).
   Logged as an event, kept in the state.
2. **warm-up**: train in fp32 for ``warmup_steps``, then move to the target once calm
   (``calm_steps`` steps without any signal; checked every ``calm_steps`` steps).
3. **signals** every step from the step's own loss and gradient norm (one device sync):
   non-finite loss/gradients, gradient-norm z-spike, loss z-spike where the gradients confirm it,
   fp16 loss-scale collapse (instability), and loss curvature and unconfirmed loss spikes
   (roughness: they only delay moving to faster levels).
4. **fallback**: on instability below fp32 the update is skipped (weights and optimizer state
   untouched) and the controller moves one level safer (fp16 -> bf16 -> fp32, levels that
   are unsupported or not faster than fp32 are not on the ladder). The failed level is
   blocked for ``cooldown_steps * 2**(failures-1)`` steps; after ``max_failures`` it is given
   up for the run, so a model that cannot train low settles in fp32.
5. **abort**: ``max_nonfinite`` consecutive non-finite steps at the safest level raise
   :class:`NonFiniteTrainingError`.

Every decision is an event dict ``{step, from, to, signal, value, reason, time}`` (JSON-safe;
``step`` counts controller steps including the deciding one, ``0`` for the probe) passed to
``on_event`` and kept in ``ctrl.events``. ``state_dict()`` holds only tensors and plain
values (``torch.load(weights_only=True)``), the GradScaler and the events included.

Distributed: pass ``reduce_flag=lambda f: any_rank(f, info, device)`` (an OR over ranks). The
controller then makes every decision jointly (an instability on any rank switches all); it
calls ``reduce_flag`` at the same points on every rank: each step while above fp32, at the
promotion checks (every ``calm_steps`` steps when a faster level is open), and in the probe.
Pass the same ``model`` (DDP-wrapped or not) on every rank; the gradients it measures are the
all-reduced ones, so skipping a non-finite step needs no extra agreement.

Usage (trainer)::

    ctrl = PrecisionController(PrecisionConfig(policy="auto"), device, on_event=write_jsonl)
    if ctrl.needs_probe:
        def probe_step(precision):                       # fwd + bwd, no optimizer update
            with ctrl.autocast(precision):
                logits = model(x)
            loss_fn(logits.float(), y).backward()
            model.zero_grad(set_to_none=True)
        ctrl.probe(probe_step)
    for batch in loader:
        with ctrl.autocast():                            # marks the step start, sets the dtype
            logits = model(batch["image"])
        loss = loss_fn(logits.float(), batch["target"])  # losses always in fp32
        result = optimizer_update(ctrl, loss, params, optimizer, cases=batch["case"])
        scheduler.step()                                 # also on skipped steps
    print(ctrl.summary())

The controller decides; the loop does the mechanics (``glioseg.training.update.optimizer_update``):
``ctrl.scale(loss).backward()``, ``ctrl.unscale_(optimizer)``, the gradient norm,
``ctrl.review(loss, norm)`` (apply or skip, one device sync), clipping and ``optimizer.step()``
when applied, clearing the gradients, then ``ctrl.conclude(decision)`` (loss scale, accounting,
the next step's precision).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from glioseg.errors import InputError
from glioseg import precisions
from glioseg.precisions import DTYPES, PRECISIONS, describe_device, device_sync
from glioseg.training.precision.config import NonFiniteTrainingError, PrecisionConfig, StepResult, json_value
from glioseg.training.precision.ladder import Ladder
from glioseg.training.precision.probe import (check_supported, measure_step_times,
                                              rank_precisions, supported_precisions)
from glioseg.training.precision.signals import SignalTracker, gradient_confirms
from glioseg.training.rng import capture_rng_state, restore_rng_state

log = logging.getLogger(__name__)

STATE_VERSION = 1


def realised_speed(steps: dict[str, int], seconds: dict[str, float]) -> dict:
    """Measured seconds per step of each precision used, and what the run saved against fp32.

    ``speedup``: fp32's seconds per step over the fastest level's; ``saved_fraction``: one minus
    the run's step time over the same steps all at fp32's rate. Both need fp32 steps to compare
    with (``auto`` runs its warm-up in fp32), else they are None.
    """
    per_step = {p: seconds[p] / n for p, n in steps.items() if n and seconds.get(p)}
    result = {"seconds_per_step": {p: round(t, 6) for p, t in per_step.items()}, "speedup": None,
              "saved_fraction": None}
    low = [p for p in per_step if p != "fp32"]
    if "fp32" in per_step and low:
        fastest = min(low, key=per_step.get)
        all_fp32 = sum(steps[p] for p in per_step) * per_step["fp32"]
        result["speedup"] = round(per_step["fp32"] / per_step[fastest], 4)
        result["saved_fraction"] = round(1.0 - sum(seconds[p] for p in per_step) / all_fp32, 4)
    return result


@dataclass(frozen=True)
class _Verdict:
    skip: bool
    fallback: bool
    signal: str | None
    value: float


@dataclass(frozen=True)
class Decision:
    """The controller's verdict on one step (:meth:`PrecisionController.review`): ``apply`` the
    optimizer update or skip it; the precision the step ran in, its loss, gradient norm and scale."""
    apply: bool
    precision: str
    loss: float
    grad_norm: float
    scale: float
    verdict: _Verdict


class PrecisionController:
    """Chooses the autocast precision of each training step and applies or skips its update.

    ``device``: where the model runs. ``reduce_flag``: OR of a flag over ranks (default:
    identity). ``on_event``: called with every decision's event dict. ``clock``: seconds
    for step timing and the probe (tests inject a fake one).
    """

    def __init__(self, config: PrecisionConfig, device: torch.device | str, *,
                 reduce_flag: Callable[[bool], bool] | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.config = config
        self.device = torch.device(device)
        self.supported = check_supported(config.policy, self.device)
        self._reduce = reduce_flag or (lambda flag: flag)
        self._on_event = on_event
        self._clock = clock
        fixed = config.policy != "auto"
        self._candidates = ((config.policy,) if fixed else
                            tuple(p for p in PRECISIONS
                                  if p in config.candidates and p in self.supported))
        self.ladder: Ladder | None = Ladder([config.policy]) if fixed else None
        self.scaler = (torch.amp.GradScaler(self.device.type, init_scale=config.init_scale)
                       if "fp16" in self._candidates else None)
        self._signals = SignalTracker.for_config(config)
        self.probe_result: dict | None = None
        self.events: list[dict] = []
        self.steps = 0
        self._calm_run = self._nonfinite_run = self._overflow_run = 0
        self._streak_cases: list[str] = []
        self._steps_in = {p: 0 for p in self._candidates}
        self._seconds_in = {p: 0.0 for p in self._candidates}
        self._skipped_by: dict[str, int] = {}
        self._started: float | None = None
        self._last_end: float | None = None
        self._bookkeeping = 0.0   # seconds of the controller's own work in review() and conclude()

    # -- state of the current step --------------------------------------------------------
    @property
    def needs_probe(self) -> bool:
        """True for ``auto`` until :meth:`probe` ran or a state was loaded."""
        return self.ladder is None

    @property
    def precision(self) -> str:
        """The precision of the next step (``fp32`` while ``auto`` waits for its probe)."""
        return "fp32" if self.ladder is None else self.ladder.precision

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def bookkeeping_seconds(self) -> float:
        """Seconds the controller's own work in :meth:`review` and :meth:`conclude` took so far.

        The one sync, signals, decisions and events; not ``backward``, the gradient norm,
        ``optimizer.step`` or freeing the gradients, the loop's mechanics. On CUDA it
        also holds the wait for the backward at the sync, so it is an upper bound there.
        """
        return self._bookkeeping

    @contextlib.contextmanager
    def autocast(self, precision: str | None = None) -> Iterator[None]:
        """Autocast for the forward pass; no argument = this training step (starts its timer).

        Compute the loss on ``logits.float()``: fp16/bf16 reductions overflow or round
        silently, and :meth:`step` refuses a loss that is not float32.
        """
        if precision is None:
            precision = self.precision
            self._started = self._clock()
        if precision == "fp32":
            ctx = torch.autocast(self.device.type, enabled=False)
        else:
            ctx = torch.autocast(self.device.type, dtype=DTYPES[precision])
        with ctx:
            yield

    # -- start-up probe ---------------------------------------------------------------------
    def probe(self, step_fn: Callable[[str], None], *, model: torch.nn.Module | None = None) -> dict:
        """Time ``step_fn(precision)`` at each supported level and fix ``auto``'s target.

        ``step_fn`` runs one real forward + backward at the given precision (use
        ``with ctrl.autocast(precision):``), applies no optimizer update and clears the
        gradients. Costs ``probe_warmup + probe_steps`` steps per level; a level slower
        than ``probe_give_up`` x fp32 stops after one step. RNG states are restored
        afterwards, and ``model``'s buffers (BatchNorm statistics) when it is given.
        Returns the probe result; a second call (or one after ``load_state_dict``)
        returns the stored result without running anything. Fixed policies: no-op.
        """
        if self.config.policy != "auto":
            return {}
        if self.probe_result is not None:
            return self.probe_result
        if self._candidates == ("fp32",):
            return self._set_probe({"fp32": math.nan}, {"fp32": "the only candidate; not timed"})
        rng = capture_rng_state()
        buffers = ({name: b.detach().clone() for name, b in model.named_buffers()}
                   if model is not None else {})
        try:
            screened = self._not_native() if self.config.prescreen else {}
            candidates = tuple(p for p in self._candidates if p not in screened)
            times, notes = measure_step_times(
                step_fn, candidates, clock=self._clock, sync=device_sync(self.device),
                warmup=self.config.probe_warmup, steps=self.config.probe_steps,
                give_up=self.config.probe_give_up, agree=self._reduce)
        finally:
            restore_rng_state(rng)
            if model is not None:
                with torch.no_grad():
                    for name, buffer in model.named_buffers():
                        buffer.copy_(buffers[name])
                model.zero_grad(set_to_none=True)
        times.update({p: math.nan for p in screened})
        return self._set_probe(times, {**notes, **screened})

    def _not_native(self) -> dict[str, str]:
        """Candidates the device does not compute natively (``glioseg.precisions.auto_levels``, the
        rule prediction's auto and the experiments share): ruled out before any step is timed.
        The ranks agree, so a mixed cluster rules out what any of its devices lacks."""
        levels = precisions.auto_levels(self.device)
        where = describe_device(self.device)
        return {p: f"not native on {where}" for p in self._candidates[1:] if self._reduce(p not in levels)}

    def _set_probe(self, times: dict[str, float], notes: dict[str, str]) -> dict:
        target, levels = rank_precisions(times, self.config.min_speedup, self._reduce)
        self.ladder = Ladder(levels)
        self.probe_result = {"times": times, "notes": notes, "target": target, "ladder": levels}
        speedup = 1.0 if target == "fp32" else times["fp32"] / times[target]
        measured = ", ".join(p + (f" {t:.3g} s/step" if math.isfinite(t) else "")
                             + (f" ({notes[p]})" if p in notes else "") for p, t in times.items())
        verdict = (f"target {target}, {speedup:.2f}x fp32" if target != "fp32" else
                   "target fp32: no lower precision is faster than fp32 on this device")
        self._emit("fp32", "fp32", "probe", speedup,
                   f"probe on {describe_device(self.device)}: {measured}; {verdict}; ladder {'/'.join(levels)}")
        return self.probe_result

    # -- one training step: the decisions (the trainer does the mechanics, training.update) --
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on: scaled by the GradScaler under fp16, else itself.

        ``loss``: a float32 scalar from the forward run under :meth:`autocast`."""
        if self.ladder is None:
            raise RuntimeError("precision policy 'auto' needs ctrl.probe(step_fn) (or "
                               "load_state_dict) before the first step")
        if loss.dtype != torch.float32 or loss.ndim != 0:
            raise ValueError(f"the loss must be a float32 scalar, got {loss.dtype} with shape "
                             f"{tuple(loss.shape)}; compute it on logits.float()")
        return self.scaler.scale(loss) if self.precision == "fp16" else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo the loss scale on ``optimizer``'s gradients (fp16 only), before they are measured."""
        if self.precision == "fp16":
            self.scaler.unscale_(optimizer)

    def review(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> Decision:
        """Judge the step from its loss and (unscaled) gradient norm: whether its update is
        applied, and at which precision it ran. The step's one device sync happens here."""
        started = self._clock()
        precision = self.precision
        # the step's one device sync: every signal is computed from these two numbers
        loss_value, norm = torch.stack([loss.detach(), grad_norm.to(loss.device, torch.float32)]).tolist()
        scale = self.scaler.get_scale() if precision == "fp16" else 1.0
        self.steps += 1
        verdict = self._judge(precision, loss_value, norm, scale)
        self._bookkeeping += self._clock() - started
        return Decision(not verdict.skip, precision, loss_value, norm, scale, verdict)

    def conclude(self, decision: Decision, *, cases: Sequence[str] | None = None) -> StepResult:
        """After the update was applied (or not): the loss scale, the step's accounting and the
        precision of the next step. ``cases``: the batch's case ids, named by
        :class:`NonFiniteTrainingError` if training must stop."""
        started = self._clock()
        if decision.precision == "fp16":
            self.scaler.update()
        verdict = decision.verdict
        self._account(decision.precision, verdict, started)
        event = self._decide(decision.precision, verdict, decision.scale, cases)
        return StepResult(verdict.skip, decision.precision, self.precision, decision.loss, decision.grad_norm,
                          decision.scale, event)

    def _judge(self, precision: str, loss: float, grad_norm: float, scale: float) -> _Verdict:
        cfg = self.config
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        signals = self._signals.observe(loss, grad_norm)
        # fp16 gradients overflowing with a finite loss are GradScaler's normal back-off
        overflow = precision == "fp16" and math.isfinite(loss) and not finite
        self._overflow_run = self._overflow_run + 1 if overflow else 0
        next_scale = scale * self.scaler.get_backoff_factor() if overflow else scale
        collapsed = precision == "fp16" and (next_scale < cfg.scale_floor
                                             or self._overflow_run >= cfg.max_scaler_skips)
        loss_spike = signals.loss_z > cfg.loss_z
        checks = (
            (not math.isfinite(loss), "nonfinite_loss", loss),
            (not finite and not overflow, "nonfinite_grad", grad_norm),
            (collapsed, "scale_collapse", next_scale),
            (signals.grad_z > cfg.grad_z, "grad_spike", signals.grad_z),
            (loss_spike and gradient_confirms(cfg.loss_grad_z, signals.grad_z, finite), "loss_spike", signals.loss_z),
        )
        signal, value = next(((name, v) for hit, name, v in checks if hit), (None, 0.0))
        # a loss spike the gradients do not confirm is no fallback, but no calm step either
        calm = (signals.ready and signal is None and not overflow and not loss_spike
                and abs(signals.curvature_z) <= cfg.curvature_z)
        self._calm_run = self._calm_run + 1 if calm else 0
        # only a level that can fall back needs the ranks' agreement (fixed policies have a
        # single level); whether to skip a non-finite step is already the same everywhere,
        # since the gradients are all-reduced before they are measured
        fallback = False
        if not self.ladder.at_bottom:
            fallback = self._reduce(signal is not None)
            if fallback and signal is None:
                signal, value = "other_rank", 1.0
        if overflow and not fallback:   # GradScaler's own skip, or its collapse at the bottom
            signal, value = ("scale_collapse", next_scale) if collapsed else ("fp16_overflow", scale)
        return _Verdict(skip=not finite or fallback, fallback=fallback, signal=signal, value=value)

    def _decide(self, precision: str, verdict: _Verdict, scale: float,
                cases: Sequence[str] | None) -> dict | None:
        if verdict.fallback:
            self._nonfinite_run, self._streak_cases = 0, []
            return self._fall_back(precision, verdict)
        if verdict.skip:
            return self._skip_in_place(precision, verdict, scale, cases)
        self._nonfinite_run, self._streak_cases = 0, []
        return self._maybe_promote() if self.config.policy == "auto" else None

    def _skip_in_place(self, precision: str, verdict: _Verdict, scale: float,
                       cases: Sequence[str] | None) -> dict:
        """Non-finite at the safest level, or an fp16 overflow: skip, stay, count."""
        if verdict.signal == "fp16_overflow":
            self._nonfinite_run, self._streak_cases = 0, []
            backoff = self.scaler.get_backoff_factor()
            return self._emit(precision, precision, verdict.signal, scale,
                              f"fp16 gradients overflowed; update skipped, loss scale "
                              f"{scale:g} -> {scale * backoff:g}", level=logging.DEBUG)
        self._nonfinite_run += 1
        self._streak_cases = (self._streak_cases + list(cases or []))[-32:]
        event = self._emit(precision, precision, verdict.signal, verdict.value,
                           f"update skipped ({self._nonfinite_run} consecutive non-finite "
                           f"steps in {precision}, limit {self.config.max_nonfinite})",
                           level=logging.WARNING)
        if self._nonfinite_run >= self.config.max_nonfinite:
            raise NonFiniteTrainingError(self._nonfinite_run, self.steps, precision,
                                         self._streak_cases)
        return event

    def _fall_back(self, precision: str, verdict: _Verdict) -> dict:
        cfg = self.config
        blocked = self.ladder.fail(self.steps, cfg.cooldown_steps, cfg.max_failures)
        self._calm_run = self._overflow_run = 0
        failures = self.ladder.failures[precision]
        then = (f"{precision} given up for this run after {failures} failures" if blocked is None
                else f"{precision} blocked for {blocked} steps (failure {failures})")
        return self._emit(precision, self.precision, verdict.signal, verdict.value,
                          f"instability ({verdict.signal}); update skipped; {then}",
                          level=logging.WARNING)

    def _maybe_promote(self) -> dict | None:
        cfg = self.config
        if self.steps < cfg.warmup_steps or self.steps % cfg.calm_steps:
            return None
        target = self.ladder.promotion_target(self.steps)
        if target is None or self._reduce(self._calm_run < cfg.calm_steps):
            return None
        before, calm = self.precision, self._calm_run
        self.ladder.move(target)
        self._calm_run = 0
        if self.precision == "fp16" and self.scaler.get_scale() < cfg.scale_floor:
            # a scale that collapsed earlier would underflow every gradient: start afresh
            self.scaler.update(new_scale=float(cfg.init_scale))
        return self._emit(before, self.precision, "calm", float(calm),
                          f"{calm} calm steps (no spikes, |curvature z| <= {cfg.curvature_z:g})"
                          f"; moving to {self.precision}")

    # -- events, accounting, summary --------------------------------------------------------
    def _emit(self, before: str, after: str, signal: str | None, value: float, reason: str,
              level: int = logging.INFO) -> dict:
        event = {"step": self.steps, "from": before, "to": after, "signal": signal,
                 "value": json_value(value), "reason": reason, "time": time.time()}
        self.events.append(event)
        log.log(level, "precision step %d: %s -> %s (%s = %s): %s", self.steps, before, after,
                signal, event["value"], reason)
        if self._on_event is not None:
            self._on_event(event)
        return event

    def _account(self, precision: str, verdict: _Verdict, bookkeeping_start: float) -> None:
        end = self._clock()
        self._bookkeeping += end - bookkeeping_start
        start = self._started if self._started is not None else self._last_end
        self._steps_in[precision] += 1
        self._seconds_in[precision] += 0.0 if start is None else end - start
        self._started, self._last_end = None, end
        if verdict.skip:
            self._skipped_by[verdict.signal] = self._skipped_by.get(verdict.signal, 0) + 1

    def summary(self) -> dict:
        """Steps and seconds per precision, switches, skipped steps (by signal), probe."""
        probe = None
        if self.probe_result is not None:
            probe = {**self.probe_result,
                     "times": {p: json_value(t) for p, t in self.probe_result["times"].items()}}
        ladder = self.ladder
        return {
            "policy": self.config.policy, "device": str(self.device),
            "device_description": describe_device(self.device), "precision": self.precision,
            "target": probe["target"] if probe else (self.config.policy if ladder else None),
            "steps": self.steps, "steps_per_precision": dict(self._steps_in),
            "seconds_per_precision": {p: round(t, 6) for p, t in self._seconds_in.items()},
            "bookkeeping_seconds": round(self._bookkeeping, 6),
            "switches": sum(e["from"] != e["to"] for e in self.events),
            "skipped": sum(self._skipped_by.values()), "skipped_by_signal": dict(self._skipped_by),
            "failures": dict(ladder.failures) if ladder else {},
            "given_up": list(ladder.given_up) if ladder else [], "probe": probe,
            **realised_speed(self._steps_in, self._seconds_in),
        }

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly; tensors and plain Python values only."""
        return {
            "version": STATE_VERSION, "policy": self.config.policy,
            "ladder": self.ladder.state_dict() if self.ladder else None,
            "probe": self.probe_result, "steps": self.steps, "calm_run": self._calm_run,
            "nonfinite_run": self._nonfinite_run, "overflow_run": self._overflow_run,
            "streak_cases": list(self._streak_cases), "signals": self._signals.state_dict(),
            "steps_in": dict(self._steps_in), "seconds_in": dict(self._seconds_in),
            "skipped_by": dict(self._skipped_by), "events": [dict(e) for e in self.events],
            "bookkeeping": self._bookkeeping,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; the probe is not run again."""
        if state.get("version") != STATE_VERSION:
            raise InputError(f"precision controller state version {state.get('version')!r}, "
                             f"this glioseg reads version {STATE_VERSION}")
        if state["policy"] != self.config.policy:
            raise InputError(f"the checkpoint was trained with precision policy "
                             f"{state['policy']!r}, the run asks for {self.config.policy!r}")
        ladder = Ladder.from_state(state["ladder"]) if state["ladder"] is not None else None
        missing = [p for p in (ladder.levels if ladder else []) if p not in self._candidates]
        if missing:
            raise InputError(f"the checkpoint's precision ladder uses {', '.join(missing)}, "
                             f"not available on {self.device} (here: {', '.join(self._candidates)})")
        self.ladder, self.probe_result, self.steps = ladder, state["probe"], int(state["steps"])
        self._calm_run, self._nonfinite_run = int(state["calm_run"]), int(state["nonfinite_run"])
        self._overflow_run = int(state["overflow_run"])
        self._streak_cases = list(state["streak_cases"])
        self._signals.load_state_dict(state["signals"])
        self._steps_in = {**self._steps_in, **state["steps_in"]}
        self._seconds_in = {**self._seconds_in, **state["seconds_in"]}
        self._skipped_by = dict(state["skipped_by"])
        self._bookkeeping = float(state["bookkeeping"])
        self.events = [dict(e) for e in state["events"]]
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
