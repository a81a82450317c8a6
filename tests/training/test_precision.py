"""The automatic multi-precision controller: probe, warm-up, signals, fallback, back-off, state."""
from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch

from glioseg.errors import InputError
from glioseg.training.precision import (NonFiniteTrainingError, PrecisionConfig,
                                        PrecisionController, supported_precisions)
from glioseg.training.precision.ladder import Ladder
from glioseg.training.update import optimizer_update
from glioseg.training.precision.probe import measure_step_times, rank_precisions
from glioseg.training.precision.signals import SignalTracker

# prescreen off: these tests script the step timings, which this machine's real bf16 speed must not override.
FAST = dict(warmup_steps=10, calm_steps=5, cooldown_steps=10, min_history=5, stats_window=20, prescreen=False)



def update(ctrl: PrecisionController, loss, model, optimizer, cases=None):
    """One training update as the trainer does it (training.update), with the controller's clipping."""
    return optimizer_update(ctrl, loss, list(model.parameters()), optimizer,
                            max_grad_norm=ctrl.config.max_grad_norm, cases=cases)

class FakeClock:
    """Seconds advance only when the probe's step function says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A tiny regression model, its optimizer and a fixed stream of batches."""

    def __init__(self, seed: int = 0, lr: float = 1e-2, data_seed: int = 1):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                         torch.nn.Linear(16, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(data_seed)
        self.x = torch.randn(256, 8, generator=gen)
        self.y = self.x.sum(dim=1, keepdim=True).sin()
        self.index = 0

    def loss(self, ctrl: PrecisionController, precision: str | None = None) -> torch.Tensor:
        rows = slice(self.index % 32 * 8, self.index % 32 * 8 + 8)
        with ctrl.autocast(precision):
            out = self.model(self.x[rows])
        return torch.nn.functional.mse_loss(out.float(), self.y[rows])

    def train(self, ctrl: PrecisionController, steps: int, inject=None) -> list:
        results = []
        for _ in range(steps):
            loss = self.loss(ctrl)
            if inject is not None:
                loss = inject(self.index, ctrl, loss)
            results.append(update(ctrl, loss, self.model, self.optimizer, cases=[f"case{self.index}"]))
            self.index += 1
        return results

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]


def auto(run: Run, speeds: dict[str, float], **settings) -> PrecisionController:
    """An ``auto`` controller probed with fake step times ``speeds`` (seconds per step)."""
    clock = FakeClock()
    ctrl = PrecisionController(PrecisionConfig(**{**FAST, **settings}), "cpu", clock=clock)
    calls = []

    def probe_step(precision: str) -> None:
        calls.append(precision)
        clock.now += speeds[precision]
        run.loss(ctrl, precision).backward()
        run.model.zero_grad(set_to_none=True)

    ctrl.probe(probe_step)
    ctrl.probe_calls = calls
    return ctrl


def switches(ctrl: PrecisionController) -> list[tuple]:
    return [(e["step"], e["from"], e["to"], e["signal"]) for e in ctrl.events
            if e["from"] != e["to"]]


def finite(run: Run) -> bool:
    return all(torch.isfinite(p).all() for p in run.model.parameters())


def test_cpu_supports_fp32_and_bf16():
    levels = supported_precisions("cpu")
    assert levels[0] == "fp32" and "bf16" in levels


@pytest.mark.parametrize("policy", ["fp32", "bf16", "fp16"])
def test_fixed_policies_never_switch(policy):
    run = Run()
    ctrl = PrecisionController(PrecisionConfig(policy=policy, **FAST), "cpu")
    assert not ctrl.needs_probe and ctrl.probe(lambda p: None) == {}

    def inject(i, ctrl, loss):
        return loss * float("nan") if i == 20 else loss * 1e4 if i == 25 else loss

    results = run.train(ctrl, 40, inject)
    assert {r.precision for r in results} == {policy}
    assert switches(ctrl) == [] and finite(run)
    assert results[20].skipped and results[20].event["signal"] == "nonfinite_loss"
    # fixed policies skip no update for a spike (fp16: GradScaler's own overflow skip only)
    assert results[25].event is None or results[25].event["signal"] == "fp16_overflow"


def test_auto_stays_in_fp32_when_low_precision_is_slower():
    """The AVX2 CPU case: bf16 11.5 s and fp16 9 s per step against 0.94 s in fp32."""
    run = Run()
    ctrl = auto(run, {"fp32": 0.94, "bf16": 11.5, "fp16": 9.0})
    assert ctrl.probe_result["target"] == "fp32" and ctrl.ladder.levels == ["fp32"]
    # warm-up steps; each slow level is stopped after its warm-up; 3 timed rounds of fp32
    assert ctrl.probe_calls == ["fp32", "bf16", "fp16"] + ["fp32"] * 3
    assert "no lower precision is faster" in ctrl.events[0]["reason"]
    results = run.train(ctrl, 60)
    assert {r.precision for r in results} == {"fp32"} and switches(ctrl) == []


def test_auto_with_fp32_as_the_only_candidate_times_nothing():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0}, candidates=("fp32",))
    assert ctrl.probe_calls == [] and ctrl.probe_result["target"] == "fp32"
    assert "not timed" in ctrl.events[0]["reason"]
    assert json.dumps(ctrl.summary(), allow_nan=False)


def test_auto_moves_to_the_fastest_after_warm_up():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5})
    assert ctrl.probe_result["target"] == "fp16"
    assert ctrl.probe_calls == ["fp32", "bf16", "fp16"] * 4   # warm-up, then 3 rounds
    results = run.train(ctrl, 30)
    assert [r.precision for r in results[:10]] == ["fp32"] * 10
    assert switches(ctrl) == [(10, "fp32", "fp16", "calm")]
    assert results[-1].precision == "fp16" and finite(run)


@pytest.mark.parametrize("times, target, ladder", [
    ({"fp32": 1.0, "bf16": 0.6, "fp16": 0.5}, "fp16", ["fp32", "bf16", "fp16"]),
    ({"fp32": 1.0, "bf16": 0.5, "fp16": 0.7}, "bf16", ["fp32", "bf16"]),
    ({"fp32": 1.0, "bf16": 1.2, "fp16": 0.5}, "fp16", ["fp32", "fp16"]),
    ({"fp32": 1.0, "bf16": 0.97, "fp16": 0.98}, "fp32", ["fp32"]),   # within min_gain
    ({"fp32": 1.0, "bf16": math.inf}, "fp32", ["fp32"]),
])
def test_rank_precisions(times, target, ladder):
    assert rank_precisions(times, min_gain=0.05) == (target, ladder)


def test_probe_stops_a_level_that_turns_slow_after_its_warm_up():
    clock, calls = FakeClock(), []
    script = {"fp32": iter([1.0, 1.0, 1.1, 0.9]), "bf16": iter([1.0, 5.0])}

    def step_fn(precision):
        calls.append(precision)
        clock.now += next(script[precision])

    times, notes = measure_step_times(step_fn, ("fp32", "bf16"), clock=clock, sync=lambda: None,
                                      warmup=1, steps=3, give_up=3.0)
    assert calls == ["fp32", "bf16", "fp32", "bf16", "fp32", "fp32"]
    assert times == {"fp32": 1.0, "bf16": 5.0} and "over 3x fp32" in notes["bf16"]


def test_rank_precisions_agrees_across_ranks():
    """Another rank found fp16 slower than fp32: no rank may choose fp16."""
    times = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5}
    other_rank = iter([False, False, True, False])   # pairs (bf16,fp32) (fp16,fp32) (fp16,bf16)
    target, ladder = rank_precisions(times, 0.05, agree=lambda f: f or next(other_rank))
    assert (target, ladder) == ("bf16", ["fp32", "bf16"])


def test_injected_nan_falls_back_skips_the_update_and_comes_back():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5})
    run.train(ctrl, 20)
    assert ctrl.precision == "fp16"
    weights, state = run.params(), copy.deepcopy(run.optimizer.state_dict())
    bad = run.train(ctrl, 1, lambda i, c, loss: loss * float("inf"))[0]
    assert bad.skipped and bad.next_precision == "bf16"
    assert bad.event["signal"] == "nonfinite_loss" and "update skipped" in bad.event["reason"]
    assert all(torch.equal(a, b) for a, b in zip(weights, run.params()))
    after = run.optimizer.state_dict()
    for key, values in state["state"].items():
        for name, tensor in values.items():
            assert torch.equal(tensor, after["state"][key][name]), name
    assert all(p.grad is None for p in run.model.parameters())
    results = run.train(ctrl, 30)
    assert finite(run) and not any(r.skipped for r in results)
    assert switches(ctrl)[-1][1:] == ("bf16", "fp16", "calm")


def test_persistent_fp16_overflow_is_a_scale_collapse_and_falls_back():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5})
    run.train(ctrl, 20)
    # gradients overflow while the loss stays finite: GradScaler alone would halve forever
    limit = ctrl.config.max_scaler_skips
    hook = run.model[0].weight.register_hook(lambda grad: grad * math.inf)
    results = run.train(ctrl, limit)
    hook.remove()
    signals = [(e["from"], e["to"], e["signal"]) for e in ctrl.events[-limit:]]
    assert signals[:-1] == [("fp16", "fp16", "fp16_overflow")] * (limit - 1)
    assert signals[-1] == ("fp16", "bf16", "scale_collapse")
    assert all(r.skipped for r in results) and finite(run)
    assert results[-1].scale == 2.0 ** 16 / 2 ** (limit - 1)


def test_loss_scaled_up_beyond_fp16_falls_back_and_training_continues():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5})
    run.train(ctrl, 20)
    weights = run.params()
    bad = run.train(ctrl, 1, lambda i, c, loss: loss * 1e30)[0]
    assert bad.skipped and bad.precision == "fp16" and bad.next_precision == "bf16"
    assert bad.event["signal"] == "loss_spike" and bad.event["value"] > 6
    assert all(torch.equal(a, b) for a, b in zip(weights, run.params()))
    results = run.train(ctrl, 30)
    assert not any(r.skipped for r in results) and finite(run)
    assert results[-1].precision == "fp16"


def _hard_patch(at: int):
    """A loss 1000x its usual value at step ``at`` with unchanged gradients, as a hard patch gives."""
    return lambda i, c, loss: loss + 1e3 * loss.detach() if i == at else loss


def test_a_loss_spike_the_gradients_do_not_confirm_is_no_fallback():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6}, candidates=("fp32", "bf16"))
    run.train(ctrl, 30)
    assert ctrl.precision == "bf16"
    events = len(ctrl.events)
    spike = run.train(ctrl, 1, _hard_patch(run.index))[0]
    assert not spike.skipped and spike.next_precision == "bf16" and len(ctrl.events) == events
    assert spike.event is None


def test_an_unconfirmed_loss_spike_still_delays_the_move_to_a_faster_level():
    calm, spiked = Run(), Run()
    ctrls = [auto(r, {"fp32": 1.0, "bf16": 0.6}, candidates=("fp32", "bf16")) for r in (calm, spiked)]
    calm.train(ctrls[0], 30)
    spiked.train(ctrls[1], 30, _hard_patch(8))   # in the warm-up (10 steps), statistics ready at 5
    first = [next(s for s, a, b, _ in switches(c) if b == "bf16") for c in ctrls]
    assert first[1] > first[0]


def test_a_loss_spike_counts_alone_without_loss_grad_z():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6}, candidates=("fp32", "bf16"), loss_grad_z=None)
    run.train(ctrl, 30)
    spike = run.train(ctrl, 1, _hard_patch(run.index))[0]
    assert spike.skipped and spike.event["signal"] == "loss_spike" and spike.next_precision == "fp32"


@pytest.mark.parametrize("value, message", [(-1.0, "loss_grad_z must be >= 0"), ("high", "expected a number")])
def test_loss_grad_z_must_be_a_non_negative_number_or_none(value, message):
    with pytest.raises(InputError, match=message):
        PrecisionConfig.from_dict({"loss_grad_z": value})
    assert PrecisionConfig.from_dict({"loss_grad_z": None}).loss_grad_z is None


def test_gradient_spike_falls_back_and_training_continues():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6}, candidates=("fp32", "bf16"))
    run.train(ctrl, 30)
    assert ctrl.precision == "bf16"
    spike = run.train(ctrl, 1, lambda i, c, loss: loss * 1e3)[0]
    assert spike.skipped and spike.event["signal"] == "grad_spike"
    assert spike.event["value"] > 6 and spike.next_precision == "fp32"
    run.train(ctrl, 30)
    assert ctrl.precision == "bf16" and finite(run)


def test_repeated_failures_back_off_exponentially_and_settle_in_fp32():
    run = Run()
    ctrl = auto(run, {"fp32": 1.0, "bf16": 0.6}, candidates=("fp32", "bf16"), max_failures=4)

    def cannot_train_low(i, c, loss):
        return loss * float("nan") if c.precision == "bf16" else loss

    results = run.train(ctrl, 300, cannot_train_low)
    moves = switches(ctrl)
    falls = [step for step, a, b, _ in moves if b == "fp32"]
    ups = [step for step, a, b, _ in moves if b == "bf16"]
    assert len(falls) == 4 and len(ups) == 4
    gaps = [up - fall for fall, up in zip(falls, ups[1:])]
    # blocked 10, 20, 40 steps; promotions happen on the next multiple of calm_steps
    assert [g >= b for g, b in zip(gaps, (10, 20, 40))] == [True] * 3
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0]
    assert "given up for this run" in ctrl.events[-1]["reason"]
    assert ctrl.summary()["given_up"] == ["bf16"]
    assert {r.precision for r in results[falls[-1]:]} == {"fp32"} and finite(run)


@pytest.mark.parametrize("policy", ["fp32", "auto"])
def test_consecutive_nonfinite_steps_in_fp32_raise_with_cases(policy):
    run = Run()
    settings = dict(max_nonfinite=3)
    ctrl = (auto(run, {"fp32": 1.0, "bf16": 5.0, "fp16": 5.0}, **settings) if policy == "auto"
            else PrecisionController(PrecisionConfig(policy="fp32", **settings), "cpu"))
    run.train(ctrl, 5)
    with pytest.raises(NonFiniteTrainingError) as info:
        run.train(ctrl, 5, lambda i, c, loss: loss * float("nan"))
    error = info.value
    assert (error.count, error.step, error.precision) == (3, 8, "fp32")
    assert error.cases == ["case5", "case6", "case7"]
    assert "3 consecutive steps with non-finite" in str(error) and "case7" in str(error)
    assert finite(run)


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trip_continues_exactly():
    def inject(i, c, loss):
        return loss * 1e30 if 24 <= i < 34 else loss

    speeds = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5}
    whole = Run()
    ctrl = auto(whole, speeds)
    expected = whole.train(ctrl, 70, inject)

    first = Run()
    ctrl1 = auto(first, speeds)
    head = first.train(ctrl1, 30, inject)
    saved = _save_load({"model": first.model.state_dict(), "opt": first.optimizer.state_dict(),
                        "precision": ctrl1.state_dict()})
    second = Run(seed=5)   # other initial weights: everything must come from the checkpoint
    second.model.load_state_dict(saved["model"])
    second.optimizer.load_state_dict(saved["opt"])
    second.index = 30
    ctrl2 = PrecisionController(PrecisionConfig(**FAST), "cpu")
    ctrl2.load_state_dict(saved["precision"])
    assert not ctrl2.needs_probe and ctrl2.probe(lambda p: pytest.fail("probed again"))
    tail = second.train(ctrl2, 40, inject)

    def trace(results):
        return [(r.loss, r.precision, r.skipped, r.scale) for r in results]

    assert trace(head + tail) == trace(expected)
    assert all(torch.equal(a, b) for a, b in zip(whole.params(), second.params()))
    strip = [{k: v for k, v in e.items() if k != "time"} for e in ctrl.events]
    assert strip == [{k: v for k, v in e.items() if k != "time"} for e in ctrl2.events]
    assert len(switches(ctrl)) >= 2   # the stretch covered a fallback and a return


def test_instability_on_another_rank_switches_this_one():
    run = Run()
    other = {"unstable": False, "calls": 0}

    def reduce_flag(flag: bool) -> bool:
        other["calls"] += 1
        return flag or other["unstable"]

    clock = FakeClock()
    ctrl = PrecisionController(PrecisionConfig(**FAST), "cpu", reduce_flag=reduce_flag,
                               clock=clock)

    def probe_step(precision):
        clock.now += {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5}[precision]

    ctrl.probe(probe_step)
    run.train(ctrl, 20)
    assert ctrl.precision == "fp16"
    calls = other["calls"]
    other["unstable"] = True
    result = run.train(ctrl, 1)[0]
    assert result.skipped and result.event["signal"] == "other_rank"
    assert result.next_precision == "bf16" and other["calls"] == calls + 1


def test_real_probe_on_a_tiny_conv_net_restores_rng_and_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.BatchNorm3d(4),
                                torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))
    x = torch.randn(1, 2, 8, 8, 8)
    ctrl = PrecisionController(PrecisionConfig(probe_steps=2), "cpu")
    running = model[1].running_mean.clone()
    torch.manual_seed(7)

    def probe_step(precision):   # a real, tiny training step, with dropout-like randomness
        with ctrl.autocast(precision):
            out = model(x * torch.rand(1).item())
        out.float().mean().backward()
        model.zero_grad(set_to_none=True)

    result = ctrl.probe(probe_step, model=model)
    after_probe = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_probe, torch.rand(3))
    assert torch.equal(model[1].running_mean, running)
    assert set(result["times"]) == set(supported_precisions("cpu"))
    target = result["target"]
    assert result["times"][target] <= result["times"]["fp32"]
    assert ctrl.events[0]["signal"] == "probe" and ctrl.events[0]["step"] == 0


def test_loss_must_be_a_float32_scalar():
    run = Run()
    ctrl = PrecisionController(PrecisionConfig(policy="bf16"), "cpu")
    with ctrl.autocast():
        low = run.model(run.x[:4]).pow(2).mean()
    assert low.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32 scalar, got torch.bfloat16.*logits.float"):
        update(ctrl, low, run.model, run.optimizer)


def test_auto_needs_a_probe_before_training():
    run = Run()
    ctrl = PrecisionController(PrecisionConfig(), "cpu")
    assert ctrl.needs_probe and ctrl.precision == "fp32"
    with pytest.raises(RuntimeError, match=r"needs ctrl\.probe"):
        update(ctrl, run.loss(ctrl), run.model, run.optimizer)


def test_config_rejects_unknown_and_bad_settings():
    with pytest.raises(ValueError, match="unknown key.*warmup.*valid keys: policy, candidates"):
        PrecisionConfig.from_dict({"policy": "auto", "warmup": 3})
    with pytest.raises(ValueError, match="policy must be one of"):
        PrecisionConfig(policy="fp8")
    with pytest.raises(ValueError, match="including fp32"):
        PrecisionConfig(candidates=("bf16",))
    ctrl = PrecisionController(PrecisionConfig.from_dict({"policy": "fp16", "warmup_steps": 3}), "cpu")
    assert ctrl.config.warmup_steps == 3 and ctrl.scaler is not None


def test_state_from_another_policy_is_refused():
    state = PrecisionController(PrecisionConfig(policy="fp32"), "cpu").state_dict()
    with pytest.raises(ValueError, match="trained with precision policy 'fp32'"):
        PrecisionController(PrecisionConfig(policy="bf16"), "cpu").load_state_dict(state)


def test_gradient_clipping_uses_the_measured_norm():
    run = Run()
    run.optimizer = torch.optim.SGD(run.model.parameters(), lr=1.0)
    ctrl = PrecisionController(PrecisionConfig(policy="fp32", max_grad_norm=0.01), "cpu")
    before = run.params()
    result = run.train(ctrl, 1)[0]
    moved = torch.cat([(a - b).flatten() for a, b in zip(run.params(), before)]).norm()
    assert result.grad_norm > 0.01 and moved.item() == pytest.approx(0.01, rel=1e-4)


def test_events_reach_the_callback_and_summary_is_json():
    run = Run()
    seen = []
    clock = FakeClock()
    ctrl = PrecisionController(PrecisionConfig(**FAST), "cpu", on_event=seen.append, clock=clock)
    ctrl.probe(lambda p: setattr(clock, "now", clock.now + {"fp32": 1, "bf16": 20, "fp16": 0.5}[p]))
    run.train(ctrl, 30, lambda i, c, loss: loss * float("nan") if i == 15 else loss)
    assert seen == ctrl.events and len(seen) >= 3
    assert set(seen[0]) == {"step", "from", "to", "signal", "value", "reason", "time"}
    summary = json.loads(json.dumps(ctrl.summary(), allow_nan=False))
    assert summary["steps"] == 30 and summary["switches"] == len(switches(ctrl)) >= 3
    assert summary["skipped_by_signal"]["nonfinite_loss"] == 1
    assert summary["probe"]["times"]["bf16"] == 20 and summary["probe"]["ladder"] == ["fp32", "fp16"]
    assert sum(summary["steps_per_precision"].values()) == 30
    assert json.loads(json.dumps(seen))[0]["signal"] == "probe"


def test_signal_tracker_flags_spikes_and_follows_a_new_level():
    tracker = SignalTracker(window=20, min_history=5, smoothing=0.1)
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(200, generator=gen) * 0.2 + 0.9).tolist()
    scores = [tracker.observe(1.0 * n, 1.0 * n) for n in noise[:50]]
    assert max(s.grad_z for s in scores[5:]) < 6 and max(s.loss_z for s in scores[5:]) < 6
    spike = tracker.observe(1.0, 1e3)
    assert spike.grad_z > 6
    later = [tracker.observe(5.0 * n, 5.0 * n) for n in noise[50:200]]   # a lasting new level
    assert later[0].loss_z > 6 and max(s.loss_z for s in later[-50:]) < 6


def test_ladder_backs_off_exponentially():
    ladder = Ladder(["fp32", "bf16", "fp16"])
    ladder.move(2)
    assert ladder.fail(step=100, cooldown=10, max_failures=3) == 10
    assert ladder.precision == "bf16" and ladder.promotion_target(105) is None
    assert ladder.promotion_target(110) == 2
    ladder.move(2)
    assert ladder.fail(step=200, cooldown=10, max_failures=3) == 20
    ladder.move(2)
    assert ladder.fail(step=300, cooldown=10, max_failures=3) is None
    assert ladder.given_up == ["fp16"] and ladder.promotion_target(10**9) is None
    assert Ladder.from_state(_save_load(ladder.state_dict())).state_dict() == ladder.state_dict()


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from glioseg.training.distributed import DistInfo, any_rank

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    run = Run(data_seed=1 + rank)   # each rank its own shard
    net = DistributedDataParallel(run.model)
    info, device, clock = DistInfo(rank, world, 0), torch.device("cpu"), FakeClock()
    # loss_grad_z None: a loss spike alone is instability, the one signal a rank can see alone
    # (gradients are all-reduced before they are measured)
    ctrl = PrecisionController(PrecisionConfig(**FAST, loss_grad_z=None), device, clock=clock,
                               reduce_flag=lambda flag: any_rank(flag, info, device))
    # rank 1 measures fp16 as slow: no rank may pick it
    speeds = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.5 if rank == 0 else 2.0}

    def step(precision: str | None) -> torch.Tensor:
        rows = slice(run.index % 32 * 8, run.index % 32 * 8 + 8)
        with ctrl.autocast(precision):
            out = net(run.x[rows])
        return torch.nn.functional.mse_loss(out.float(), run.y[rows])

    def probe_step(precision: str) -> None:
        clock.now += speeds[precision]
        step(precision).backward()
        run.model.zero_grad(set_to_none=True)

    ctrl.probe(probe_step)
    precisions = []
    for i in range(30):
        loss = step(None)
        if rank == 1 and i == 25:   # a loss spike on one rank only (gradients unchanged)
            loss = loss + 1e3 * loss.detach()
        precisions.append(update(ctrl, loss, run.model, run.optimizer).precision)
        run.index += 1
    result = {"precisions": precisions, "switches": switches(ctrl),
              "weights": [p.detach().sum().item() for p in run.model.parameters()]}
    with open(f"{out}/{rank}.json", "w") as fh:
        json.dump(result, fh)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_agree_on_every_decision(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    first, second = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert first["precisions"] == second["precisions"]
    assert [s[:3] for s in first["switches"]] == [s[:3] for s in second["switches"]]
    assert first["weights"] == second["weights"]
    assert {p for p in first["precisions"]} == {"fp32", "bf16"}   # fp16 excluded by rank 1
    assert [26, "bf16", "fp32", "other_rank"] in first["switches"]
    assert [26, "bf16", "fp32", "loss_spike"] in second["switches"]


def test_the_probe_times_only_the_levels_the_device_computes_natively(monkeypatch):
    """Training's auto starts from the capability rule prediction and experiments use
    (glioseg.precisions.auto_levels): a level that is not native is ruled out before any step."""
    from glioseg import precisions

    monkeypatch.setattr(precisions, "native_precisions", lambda device: ("fp32", "bf16"))
    ctrl = PrecisionController(PrecisionConfig(candidates=("fp32", "bf16", "fp16"), probe_steps=1), "cpu",
                               clock=iter(range(1000)).__next__)
    timed = []
    ctrl.probe(lambda precision: timed.append(precision))
    assert "fp16" not in timed and set(timed) <= {"fp32", "bf16"}
    assert ctrl.probe_result["notes"]["fp16"].startswith("not native on cpu")
    assert math.isnan(ctrl.probe_result["times"]["fp16"]) and "fp16" not in ctrl.probe_result["ladder"]


def test_realised_speed_compares_each_level_with_fp32_steps():
    from glioseg.training.precision import realised_speed

    got = realised_speed({"fp32": 10, "bf16": 30, "fp16": 0}, {"fp32": 30.0, "bf16": 60.0, "fp16": 0.0})
    assert got["seconds_per_step"] == {"fp32": 3.0, "bf16": 2.0}
    assert got["speedup"] == 1.5
    assert got["saved_fraction"] == round(1 - 90.0 / 120.0, 4)
    assert realised_speed({"fp32": 4}, {"fp32": 8.0}) == {"seconds_per_step": {"fp32": 2.0}, "speedup": None,
                                                          "saved_fraction": None}
