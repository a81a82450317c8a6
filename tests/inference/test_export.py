"""Export: ONNX and TorchScript match PyTorch within 1e-4; a failed check leaves nothing behind."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.cli import main
from glioseg.inference.bundle import load_bundle
from glioseg.inference.export import (OnnxNetwork, export_onnx, export_torchscript, sort_safetensors_metadata,
                                     write_released)
from glioseg.inference.predictor import PredictConfig, Predictor, TorchNetwork
from glioseg.training.checkpoint import save_checkpoint
from ._fakes import LPS, tiny_bundle, tiny_dalight_bundle, write_case


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """One ONNX export shared by the tests (torch.export + ONNX optimisation: 20-40 s on this CPU)."""
    folder = tmp_path_factory.mktemp("onnx")
    bundle = tiny_bundle()
    result = export_onnx(bundle, folder / "model.onnx")
    return bundle, folder / "model.onnx", result


@pytest.mark.slow
def test_onnx_export_matches_pytorch(onnx_export):
    bundle, path, result = onnx_export
    assert result["max_abs_diff"] <= 1e-4
    config = json.loads((path.parent / "model.onnx.json").read_text())
    assert config["format"] == "onnx" and config["window"] is None and config["inputs"] == ["image"]
    assert config["bundle"] == bundle.metadata()


@pytest.mark.slow
def test_onnx_predicts_like_pytorch_with_dynamic_batch(onnx_export):
    bundle, path, _ = onnx_export
    image = np.random.default_rng(0).normal(size=(4, 20, 24, 18)).astype(np.float32)
    config = PredictConfig(window="patch", sw_batch_size=3)
    via_onnx, stats = Predictor([OnnxNetwork(path)], config).probabilities(image)
    via_torch, _ = Predictor([TorchNetwork(bundle)], config).probabilities(image)
    assert stats.windows == 8 and stats.window_size == [16, 16, 16]
    np.testing.assert_allclose(via_onnx, via_torch, atol=1e-4)


def _as_fixed_window_export(onnx_export, folder):
    """The shared export as an older glioseg wrote it: a config that fixes the window at the patch
    (the graph takes any window, so only the config's word changes)."""
    _, path, _ = onnx_export
    folder.mkdir()
    fixed = folder / "fixed.onnx"
    fixed.write_bytes(path.read_bytes())
    config = json.loads((path.parent / "model.onnx.json").read_text())
    (folder / "fixed.onnx.json").write_text(json.dumps({**config, "file": fixed.name, "window": [16, 16, 16]}))
    return fixed


@pytest.mark.slow
def test_onnx_window_is_dynamic_unless_fixed(onnx_export, tmp_path):
    bundle, path, _ = onnx_export
    image = np.random.default_rng(1).normal(size=(4, 20, 24, 18)).astype(np.float32)
    via_onnx, stats = Predictor([OnnxNetwork(path)], PredictConfig()).probabilities(image)
    via_torch, torch_stats = Predictor([TorchNetwork(bundle)], PredictConfig()).probabilities(image)
    assert stats.windows == torch_stats.windows == 1 and stats.window_size == torch_stats.window_size == [24, 24, 24]
    np.testing.assert_allclose(via_onnx, via_torch, atol=1e-4)
    fixed = _as_fixed_window_export(onnx_export, tmp_path / "old")
    with pytest.raises(ValueError, match=r"takes windows of \[16, 16, 16\] only"):
        Predictor([OnnxNetwork(fixed)], PredictConfig(window=(8, 8, 8))).probabilities(image)


@pytest.mark.slow
def test_a_fixed_window_onnx_model_says_why_its_window_differs(onnx_export, tmp_path, caplog):
    fixed = _as_fixed_window_export(onnx_export, tmp_path / "old")
    predictor = Predictor([OnnxNetwork(fixed)], PredictConfig())         # default: the brain box
    assert len(predictor.window_notes) == 1
    assert "fixed.onnx was exported with a fixed window of [16, 16, 16]" in predictor.window_notes[0]
    assert "one window over the brain box" in predictor.window_notes[0] and "export it again" in caplog.text
    assert Predictor([OnnxNetwork(fixed)], PredictConfig(window="patch")).window_notes == []


@pytest.mark.slow
def test_onnx_is_not_loaded_as_weights(onnx_export):
    _, path, _ = onnx_export
    with pytest.raises(ValueError, match="run it with glioseg predict --onnx"):
        load_bundle(path)


def test_torchscript_export_matches_pytorch_and_is_refused_as_weights(tmp_path):
    result = export_torchscript(tiny_bundle(), tmp_path / "model.ts")
    assert result["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="TorchScript archive"):
        load_bundle(tmp_path / "model.ts")


def test_a_failed_check_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="differs from PyTorch .* nothing was written"):
        export_torchscript(tiny_bundle(), tmp_path / "model.ts", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_export_cli(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "last.pt", {"bundle": tiny_bundle().to_state()})
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "export safetensors" in capsys.readouterr().out
    reloaded = load_bundle(tmp_path / "m.safetensors")
    original = load_bundle(ckpt)
    for key, value in original.weights.items():
        assert torch.equal(reloaded.weights[key], value)
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                 "--roi", "12", "12", "12"]) == 2  # 12 is not a multiple of the size divisor 8
    assert not (tmp_path / "m.ts").exists()


@pytest.mark.slow
def test_predict_cli_runs_onnx_like_the_checkpoint(onnx_export, tmp_path):
    """The same command with the .pt and the .onnx of one model: the same windows (one over the
    brain box, #23: eight 16³ windows before), the same labels."""
    bundle, path, _ = onnx_export
    folder, _ = write_case(tmp_path / "data", LPS)
    ckpt = save_checkpoint(tmp_path / "last.pt", {"bundle": bundle.to_state()})
    assert main(["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pt"),
                 "--precision", "fp32"]) == 0   # the ONNX model computes in fp32
    assert main(["predict", str(folder), "--checkpoint", str(path), "--out", str(tmp_path / "onnx")]) == 0
    assert main(["predict", str(folder), "--onnx", str(path), "--out", str(tmp_path / "x"),
                 "--precision", "bf16"]) == 2
    a, b = (np.asanyarray(nib.load(str(tmp_path / d / f"{folder.name}.nii.gz")).dataobj) for d in ("pt", "onnx"))
    assert (a == b).mean() > 0.9999
    pt_run, onnx_record = (json.loads((tmp_path / d / f"{folder.name}.json").read_text()) for d in ("pt", "onnx"))
    assert onnx_record["models"][0]["runtime"] == "onnxruntime"
    for key in ("window", "windows_run"):
        assert onnx_record["run"][key] == pt_run["run"][key]
    assert onnx_record["run"]["windows_run"] == 1 and onnx_record["run"]["window_notes"] == []


def _site_probabilities(network, image, site):
    return Predictor([network], PredictConfig(window="patch")).probabilities(image, site=site)[0]


def test_dalight_site_ids_reach_the_network():
    bundle = tiny_dalight_bundle()
    image = np.random.default_rng(0).normal(size=(4, 16, 16, 16)).astype(np.float32)
    network = TorchNetwork(bundle)
    known, unknown = (_site_probabilities(network, image, s) for s in ("TCIA01", "CBICA"))
    assert np.abs(known - unknown).max() > 1e-3


def test_dalight_torchscript_export_takes_ids(tmp_path):
    bundle = tiny_dalight_bundle()
    result = export_torchscript(bundle, tmp_path / "dalight.ts")
    assert result["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_dalight_onnx_export_keeps_site_ids(tmp_path):
    bundle = tiny_dalight_bundle()
    export_onnx(bundle, tmp_path / "dalight.onnx")
    config = json.loads((tmp_path / "dalight.onnx.json").read_text())
    assert config["inputs"] == ["image", "ids"]
    image = np.random.default_rng(0).normal(size=(4, 20, 16, 16)).astype(np.float32)
    onnx_net, torch_net = OnnxNetwork(tmp_path / "dalight.onnx"), TorchNetwork(bundle)
    for site in ("TCIA01", None):
        np.testing.assert_allclose(_site_probabilities(onnx_net, image, site),
                                   _site_probabilities(torch_net, image, site), atol=1e-4)


def test_released_weights_are_the_same_bytes_every_time(tmp_path):
    # safetensors writes its metadata map in hash order; sorted afterwards, a rebuilt release keeps
    # the bytes of files whose tensors did not change
    from safetensors.torch import load_file, save_file

    bundle = tiny_bundle(0)
    files = [write_released(bundle, tmp_path / f"{i}" / "m.safetensors")["file"] for i in range(4)]
    assert len({open(f, "rb").read() for f in files}) == 1
    metadata = {f"k{i}": "v" for i in range(12, 0, -1)}
    weights = {"b": torch.ones(3), "a": torch.zeros(2, 2)}
    save_file(weights, str(tmp_path / "x.safetensors"), metadata=metadata)
    sort_safetensors_metadata(tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted(metadata)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(weights) and all(torch.equal(back[k], weights[k]) for k in weights)
