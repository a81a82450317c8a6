"""``predict --precision auto``: what the probe measures decides, never the test's CPU."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.inference import inputs
from glioseg.inference import precision as inference_precision
from glioseg.inference.pipeline import OutputOptions, predict_all
from glioseg.inference.precision import choose_precision, pick, time_precisions
from glioseg.inference.predictor import PredictConfig, Predictor
from ._fakes import LPS, FakeNetwork, threshold_logits, write_case


class Clock:
    """Seconds that pass only when a fake window runs: ``cost[precision]`` each."""

    def __init__(self, cost: dict[str, float]):
        self.now, self.cost, self.runs = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def window(self, precision: str) -> None:
        self.runs.append(precision)
        self.now += self.cost[precision]


def test_time_precisions_warms_up_then_interleaves():
    clock = Clock({"fp32": 1.0, "bf16": 0.5})
    times = time_precisions(clock.window, ("fp32", "bf16"), repeats=2, clock=clock)
    assert times == {"fp32": 1.0, "bf16": 0.5}
    assert clock.runs == ["fp32", "bf16"] + ["fp32", "bf16"] * 2


@pytest.mark.parametrize("times,chosen", [
    ({"fp32": 1.0, "bf16": 0.6}, "bf16"),
    ({"fp32": 1.0, "bf16": 0.97}, "fp32"),             # under the 5 % a level must gain
    ({"fp32": 1.0, "bf16": 2.5}, "fp32"),
    ({"fp32": 1.0, "bf16": 0.7, "fp16": 0.5}, "fp16"),
])
def test_pick_the_fastest_level_that_beats_fp32(times, chosen):
    assert pick(times) == chosen


@pytest.mark.parametrize("native,cost,chosen", [
    (("fp32", "bf16"), {"fp32": 1.0, "bf16": 0.6}, "bf16"),
    (("fp32", "bf16"), {"fp32": 1.0, "bf16": 1.4}, "fp32"),
    (("fp32",), {"fp32": 1.0}, "fp32"),
])
def test_choose_precision_times_only_native_levels(monkeypatch, native, cost, chosen):
    monkeypatch.setattr(inference_precision, "native_precisions", lambda device: native)
    clock = Clock(cost)
    choice = choose_precision(clock.window, "cpu", clock=clock)
    assert choice.precision == chosen and set(clock.runs) == (set(native) if len(native) > 1 else set())
    assert ("no native low precision" in choice.reason) == (native == ("fp32",))
    assert json.dumps(choice.to_dict())        # the sidecar's record is plain JSON
    assert all(math.isnan(t) for t in choice.times.values()) == (native == ("fp32",))


def test_choose_precision_on_this_machine_is_consistent_with_its_hardware():
    """The probe on this CPU, whatever it is (or as GLIOSEG_TEST_PROBE forces it): it picks a level
    it found native and faster."""
    conv = torch.nn.Conv3d(4, 16, 3, padding=1)
    x = torch.randn(1, 4, 24, 24, 24)

    def window(precision):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
            conv(x)

    choice = choose_precision(window, "cpu")
    assert choice.precision in inference_precision.native_precisions("cpu")
    if choice.precision != "fp32":
        assert choice.times[choice.precision] < choice.times["fp32"]


@pytest.mark.parametrize("probe,chosen", [("fast", "bf16"), ("slow", "fp32")])
def test_auto_predictor_runs_the_chosen_precision_and_records_it(tmp_path, forced_probe, probe, chosen):
    forced_probe(probe)
    seen = []

    def logits(x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return threshold_logits(x)

    net = FakeNetwork(logits)
    predictor = Predictor([net], PredictConfig(precision="auto"))
    assert predictor.config.precision == chosen and predictor.requested_precision == "auto"
    assert f"; {chosen}" in predictor.precision_choice.reason

    folder, label = write_case(tmp_path / "in", LPS)
    items = inputs.collect([folder], {}, None, predictor.bundle.channels, None, "brats")
    seen.clear()
    predict_all(items, predictor, tmp_path / "out", OutputOptions())
    assert seen and set(seen) == {torch.bfloat16 if chosen == "bf16" else torch.float32}
    sidecar = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert sidecar["run"]["precision"] == chosen and sidecar["request"]["settings"]["precision"] == "auto"
    assert sidecar["run"]["precision_choice"] == predictor.precision_choice.reason
    written = np.asarray(nib.load(next((tmp_path / "out").rglob("*.nii.gz"))).dataobj)
    np.testing.assert_array_equal(written, label)      # a pointwise model: bf16 changes no label here


def test_onnx_models_stay_fp32_under_auto(forced_probe):
    forced_probe("fast")
    net = FakeNetwork(threshold_logits)
    net.kind = "onnxruntime"
    predictor = Predictor([net], PredictConfig(precision="auto"))
    assert predictor.config.precision == "fp32" and "ONNX" in predictor.precision_choice.reason
