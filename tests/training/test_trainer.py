"""The trainer end to end on phantoms: run folder, checkpoint contents, precision fallback, workers."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from glioseg.config import from_dict
from glioseg.inference.bundle import load_bundle
from glioseg.checkpoint_io import load_checkpoint
from glioseg.training.datasource import prepare_data
from glioseg.training.distributed import DistInfo
from glioseg.training.precision import PrecisionController
from glioseg.training.recipe import TrainConfig
from glioseg.training.run_folder import RunFolder
from glioseg.training.trainer import Trainer
from glioseg import run_io
from glioseg.run_io import RunFiles

from ._runs import TINY, run_inprocess, train_args, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_FILES = (run_io.CONFIG, run_io.SPLIT, run_io.METRICS, run_io.STEPS, run_io.EVENTS, run_io.LAST, run_io.BEST,
             run_io.CURVES, run_io.REPORT)
METRICS = ("epoch", "train_loss", "val_dice_wt", "val_dice_tc", "val_dice_et", "precision", "seconds")
STATE = ("model", "optimizer", "controller", "rng", "progress", "config", "split", "bundle")


def without_onednn():
    """oneDNN's bf16 conv3d weight gradient on 2³ inputs (the bottom of these 16³ patches) is
    sometimes not finite, on CPUs with native bf16 too (2 of 10 tiny SegResNet steps on a Zen 4,
    0 of 10 at 32³): such a step would fall back, which another test covers. aten's own bf16
    kernels run the same steps here."""
    return torch.backends.mkldnn.flags(enabled=False)


# One probe round; move to the target after one fp32 step: no statistics are needed to be calm
# (a 4-step run has no history for z-scores; spikes are another test's subject).
CALM_AFTER_ONE_STEP = {"probe_steps": 1, "warmup_steps": 1, "calm_steps": 1, "min_history": 0,
                       "grad_z": 1e6, "loss_z": 1e6, "curvature_z": 1e6}


@pytest.mark.parametrize("probe", ["fast", "slow"])
def test_train_auto_writes_the_whole_run_folder(phantom_cache, tmp_path, forced_probe, probe):
    """``auto`` with bf16 probed faster (it moves there after one calm fp32 step) and slower (it
    stays in fp32): the run folder, checkpoint and summary say what happened, on any CPU."""
    forced_probe(probe)
    config = write_config(tmp_path, epochs=2, steps_per_epoch=2,
                          precision={"policy": "auto", **CALM_AFTER_ONE_STEP})
    run = tmp_path / "run"
    with without_onednn():
        assert run_inprocess(train_args(phantom_cache, run, config)) == 0

    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    metrics = RunFiles(run).read_metric_rows()
    assert [int(r["epoch"]) for r in metrics] == [1, 2]
    assert set(METRICS) <= set(metrics[0])
    for region in ("wt", "tc", "et"):
        assert 0.0 <= float(metrics[-1][f"val_dice_{region}"]) <= 1.0
    steps = RunFiles(run).read_steps()
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) and r["skipped"] == "0" for r in steps)

    target = "bf16" if probe == "fast" else "fp32"
    events = RunFiles(run).read_events()
    assert events[0]["signal"] == "probe" and events[0]["step"] == 0
    assert events[0]["from"] == events[0]["to"] == "fp32" and f"target {target}" in events[0]["reason"]
    assert "native bf16" in events[0]["reason"]          # the probe names what the CPU offers
    expected = ["fp32"] + [target] * 3
    assert [r["precision"] for r in steps] == expected
    summary = RunFiles(run).read_summary()
    assert summary["target"] == target and summary["steps_per_precision"][target] == expected.count(target)
    assert (summary["speedup"] is not None) == (target == "bf16")
    assert "Precision" in RunFiles(run).report.read_text()

    state = load_checkpoint(RunFiles(run).last)
    assert set(STATE) <= set(state)
    assert state["progress"]["step"] == 4 and state["progress"]["epoch"] == 2
    assert state["config"]["precision"]["policy"] == "auto" and state["split"]["val"]
    assert state["controller"]["probe"]["target"] == target
    bundle = load_bundle(RunFiles(run).last)
    model = bundle.build_model()
    with torch.no_grad():
        logits = model(torch.zeros(1, len(bundle.channels), 16, 16, 16))
    assert logits.shape == (1, 3, 16, 16, 16) and torch.isfinite(logits).all()
    best = max(float(r["val_dice_mean"]) for r in metrics)
    assert load_checkpoint(RunFiles(run).best)["progress"]["best"] == best == state["progress"]["best"]


class FakeClock:
    """Seconds that pass only when the probe says so (the controller's clock is injectable)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NaNLossAt:
    """The trainer's loss with a non-finite value injected at one step (a corrupted batch), and
    the weights checked to be untouched by that step's skipped update."""

    def __init__(self, loss_fn, model, bad_step: int):
        self.loss_fn, self.model, self.bad_step, self.calls = loss_fn, model, bad_step, 0
        self.target = loss_fn.target
        self.before: list[torch.Tensor] | None = None
        self.untouched: bool | None = None

    def __call__(self, logits, target):
        self.calls += 1
        loss = self.loss_fn(logits, target)
        if self.calls == self.bad_step:
            self.before = [p.detach().clone() for p in self.model.parameters()]
            return loss * float("nan")
        if self.calls == self.bad_step + 1:
            self.untouched = all(torch.equal(a, p) for a, p in zip(self.before, self.model.parameters()))
        return loss


def test_trainer_runs_glioseg_cpu_kernels_and_saves_plain_weights(phantom_cache, tmp_path):
    """On a CPU the trainer's dense convs run on oneDNN (cpu_conv); the checkpoint's weights load
    into the registry's plain network."""
    from glioseg.models.cpu_conv import CpuConv3d
    from glioseg.models.registry import create

    config = from_dict(TrainConfig, {**TINY, "precision": "fp32", "epochs": 1, "steps_per_epoch": 1,
                                     "val_fraction": 0.0})
    run, info, device = RunFolder(tmp_path / "run"), DistInfo(), torch.device("cpu")
    trainer = Trainer(config, prepare_data(phantom_cache, run.path, config, "fp32", None, info), run, info, device)
    assert any(type(m) is CpuConv3d for m in trainer.model.modules())
    trainer.fit()
    plain = create(config.model, in_channels=4, out_channels=trainer.output.channels, **config.model_options)
    plain.load_state_dict(load_checkpoint(run.last)["model"], strict=True)


def test_injected_instability_in_bf16_falls_back_to_fp32_and_training_continues(phantom_cache, tmp_path):
    """``auto`` probed as if bf16 were twice as fast (on this CPU it is far slower, so the real probe
    would never leave fp32); one calm fp32 step, then bf16; a NaN loss at step 3 must skip that
    update, fall back to fp32 for the cool-down and let training go on with finite weights.

    The "bf16" steps compute in fp32: the controller's decisions are under test, not a CPU's
    emulated bf16 (on an AVX-512 Xeon without BF16 the first real bf16 step of this tiny network
    already had an infinite gradient, which the controller rightly treated the same way)."""
    options = {"candidates": ["fp32", "bf16"], "prescreen": False, "warmup_steps": 1, "calm_steps": 1, "min_history": 0,
               "grad_z": 1e6, "loss_z": 1e6, "curvature_z": 1e6, "cooldown_steps": 100}
    config = from_dict(TrainConfig, {**TINY, "precision": {"policy": "auto", **options},
                                     "epochs": 1, "steps_per_epoch": 5, "val_fraction": 0.0})
    run, info, device = RunFolder(tmp_path / "run"), DistInfo(), torch.device("cpu")
    trainer = Trainer(config, prepare_data(phantom_cache, run.path, config, "auto", None, info), run, info, device)
    clock = FakeClock()
    trainer.controller = PrecisionController(config.precision, device, on_event=run.log_event, clock=clock)
    trainer.controller.probe(lambda p: setattr(clock, "now", clock.now + {"fp32": 1.0, "bf16": 0.5}[p]))
    trainer.controller.autocast = lambda precision=None: contextlib.nullcontext()
    trainer.loss_fn = NaNLossAt(trainer.loss_fn, trainer.model, bad_step=3)
    trainer.fit()

    steps = run.files.read_steps()
    assert [(r["precision"], r["skipped"]) for r in steps] == [
        ("fp32", "0"), ("bf16", "0"), ("bf16", "1"), ("fp32", "0"), ("fp32", "0")]
    assert steps[2]["loss"] == "nan" and all(math.isfinite(float(r["loss"])) for r in steps[3:])
    assert trainer.loss_fn.untouched, "the skipped update changed the weights"
    moves = [(e["step"], e["from"], e["to"], e["signal"]) for e in run.files.read_events()]
    assert moves == [(0, "fp32", "fp32", "probe"), (1, "fp32", "bf16", "calm"),
                     (3, "bf16", "fp32", "nonfinite_loss")]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = load_checkpoint(run.last)
    assert state["progress"]["step"] == 5 and state["controller"]["ladder"]["failures"]["bf16"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    summary = trainer.controller.summary()
    assert summary["skipped"] == 1 and summary["steps_per_precision"] == {"fp32": 3, "bf16": 2}


def test_a_deeply_supervised_run_trains_checkpoints_and_predicts(phantom_cache, tmp_path):
    """The heads train with the network, are saved in its checkpoint, and prediction uses the main
    output only (one tensor in the checkpoint's geometry)."""
    config = write_config(tmp_path, epochs=1, steps_per_epoch=2, val_fraction=0.0,
                          model_options={"init_filters": 8, "deep_supervision": 2})
    run = tmp_path / "run"
    assert run_inprocess(train_args(phantom_cache, run, config)) == 0
    state = load_checkpoint(run / run_io.LAST)["model"]
    assert {k for k in state if k.startswith("ds_heads.")} == {f"ds_heads.{i}.{p}" for i in (0, 1)
                                                               for p in ("weight", "bias")}
    net = load_bundle(run / run_io.LAST).build_model()
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 4, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 16, 16, 16)
