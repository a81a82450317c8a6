"""``predict --precision auto``: the device's capability decides, never a timing and never the test's CPU.

The capability is injected (``native_precisions``), so every branch runs on any CPU (AVX2 EPYC,
AVX-512 Xeon, Zen 4 with AVX512-BF16, Sapphire Rapids with AMX).
"""
from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.inference import inputs
from glioseg.inference import precision as inference_precision
from glioseg.inference.pipeline import OutputOptions, predict_all
from glioseg.inference.precision import choose_precision
from glioseg.inference.predictor import PredictConfig, Predictor, TorchNetwork
from glioseg import precisions
from ._fakes import LPS, FakeNetwork, threshold_logits, tiny_bundle, write_case

NATIVE = {"none": ("fp32",), "bf16": ("fp32", "bf16"), "fp16": ("fp32", "fp16"), "both": ("fp32", "bf16", "fp16")}


def _native(monkeypatch, levels: tuple[str, ...]) -> None:
    monkeypatch.setattr(precisions, "native_precisions", lambda device: levels)   # the rule auto_levels reads


@pytest.mark.parametrize("native,chosen", [("none", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("both", "bf16")])
def test_auto_is_the_first_native_low_precision(monkeypatch, native, chosen):
    _native(monkeypatch, NATIVE[native])
    choice = choose_precision("cpu")
    assert choice.precision == chosen
    assert ("no native low precision" in choice.reason) == (native == "none")
    assert json.dumps(choice.to_dict())        # the sidecar's record is plain JSON


def test_auto_does_not_depend_on_how_fast_a_window_runs(monkeypatch):
    """Machine load once made a probe window pick fp32 and the next run bf16 (#23): a network whose
    bf16 windows are slow for one Predictor and fast for the next must not change the decision."""
    _native(monkeypatch, NATIVE["bf16"])
    loaded = {"now": True}

    def logits(x):
        if torch.is_autocast_enabled("cpu") and loaded["now"]:
            time.sleep(0.02)                       # another process takes the cores
        return threshold_logits(x)

    chosen = set()
    for load in (True, False, True, False):
        loaded["now"] = load
        chosen.add(Predictor([FakeNetwork(logits)], PredictConfig(precision="auto")).config.precision)
    assert chosen == {"bf16"}


def _tiny_predict(tmp_path, out_name: str, case_ids=("Brats18_TEST_001_1", "Brats18_TEST_002_1")):
    data = tmp_path / "in"
    if not data.exists():
        for seed, case_id in enumerate(case_ids):
            write_case(data, LPS, case_id=case_id, seed=seed)
    predictor = Predictor([TorchNetwork(tiny_bundle())], PredictConfig(precision="auto"))
    items = inputs.collect([data], {}, None, predictor.bundle.channels, None, "brats")
    counts = predict_all(items, predictor, tmp_path / out_name, OutputOptions())
    return predictor, counts


def _labels(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize("native", ["none", "bf16"])
def test_two_runs_of_one_command_write_identical_label_files(tmp_path, monkeypatch, native):
    _native(monkeypatch, NATIVE[native])
    first, _ = _tiny_predict(tmp_path, "a")
    second, _ = _tiny_predict(tmp_path, "b")
    expected = "fp32" if native == "none" else "bf16"
    assert first.config.precision == second.config.precision == expected
    a, b = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    assert len(a) == 2 and a == b
    for sidecar in (tmp_path / "a").glob("*.json"):
        record = json.loads(sidecar.read_text())
        assert record["run"]["precision"] == expected                    # what ran, per case
        assert record["request"]["settings"]["precision"] == expected
        assert record["request"]["settings"]["precision_policy"] == "auto"


@pytest.mark.parametrize("native", ["none", "bf16"])
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, native):
    _native(monkeypatch, NATIVE[native])
    _tiny_predict(tmp_path, "whole")
    _tiny_predict(tmp_path, "resumed")
    killed = tmp_path / "resumed" / "Brats18_TEST_002_1"
    for path in (killed.with_suffix(".json"), killed.with_name(killed.name + ".nii.gz")):
        path.unlink()                                                   # as if killed before case 2
    _, counts = _tiny_predict(tmp_path, "resumed")
    assert counts == {"done": 1, "skipped": 1, "failed": 0}
    assert _labels(tmp_path / "resumed") == _labels(tmp_path / "whole")


def test_a_resume_under_another_decision_recomputes_instead_of_mixing(tmp_path, monkeypatch):
    """A folder started where bf16 is native and resumed where it is not (a moved disk, another
    node) is recomputed in fp32: a folder never holds cases of two precisions."""
    _native(monkeypatch, NATIVE["bf16"])
    _tiny_predict(tmp_path, "out")
    _native(monkeypatch, NATIVE["none"])
    _, counts = _tiny_predict(tmp_path, "out")
    assert counts["done"] == 2 and counts["skipped"] == 0
    runs = {json.loads(p.read_text())["run"]["precision"] for p in (tmp_path / "out").glob("*.json")}
    assert runs == {"fp32"}


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
    assert predictor.precision_choice.reason.startswith(chosen)
    assert not seen                                # deciding ran no window

    folder, label = write_case(tmp_path / "in", LPS)
    items = inputs.collect([folder], {}, None, predictor.bundle.channels, None, "brats")
    predict_all(items, predictor, tmp_path / "out", OutputOptions())
    assert seen and set(seen) == {torch.bfloat16 if chosen == "bf16" else torch.float32}
    sidecar = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert sidecar["run"]["precision"] == chosen and sidecar["request"]["settings"]["precision_policy"] == "auto"
    assert sidecar["run"]["precision_choice"] == predictor.precision_choice.reason
    written = np.asarray(nib.load(next((tmp_path / "out").rglob("*.nii.gz"))).dataobj)
    np.testing.assert_array_equal(written, label)      # a pointwise model: bf16 changes no label here


def test_onnx_models_stay_fp32_under_auto(forced_probe):
    forced_probe("fast")
    net = FakeNetwork(threshold_logits)
    net.kind = "onnxruntime"
    predictor = Predictor([net], PredictConfig(precision="auto"))
    assert predictor.config.precision == "fp32" and "ONNX" in predictor.precision_choice.reason
