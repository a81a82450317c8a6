"""One resolver from a model reference to its file and kind: a checkpoint, released weights or
their config, an ONNX config, a released name; a folder or a non-model file is a clear error."""
from __future__ import annotations

import json

import pytest
import torch

from glioseg.errors import InputError
from glioseg.inference.bundle import CONFIG_KIND, load_bundle
from glioseg.inference.export import write_released
from glioseg.inference.model_ref import ModelRef, is_model_file, resolve_model
from glioseg.inference.predictor import open_network
from glioseg.inference.released import ReleasedModelError
from glioseg.run_io import RunFiles
from glioseg.training.checkpoint import save_checkpoint

from ._fakes import tiny_bundle


def test_files_resolve_to_what_their_bytes_say(tmp_path):
    run = RunFiles(tmp_path / "run")
    run.path.mkdir()
    checkpoint = save_checkpoint(run.best, {"bundle": tiny_bundle(0).to_state()})
    weights = tmp_path / "m.safetensors"
    write_released(tiny_bundle(0), weights)
    onnx_config = tmp_path / "x.onnx.json"
    onnx_config.write_text(json.dumps({"kind": CONFIG_KIND, "format": "onnx", "file": "x.onnx"}))
    assert resolve_model(checkpoint) == ModelRef(checkpoint, "checkpoint")
    assert resolve_model(str(weights)) == ModelRef(weights, "released")
    config = weights.with_name(weights.name + ".json")
    assert resolve_model(config).kind == "released" and resolve_model(onnx_config).kind == "onnx"
    assert load_bundle(resolve_model(config).path).metadata() == load_bundle(checkpoint).metadata()
    assert all(is_model_file(p) for p in (checkpoint, weights, config, onnx_config))
    with pytest.raises(InputError, match="its model file x.onnx is missing"):
        load_bundle(onnx_config)   # as before: the released-file checks come first


def test_a_run_folder_says_which_model_files_it_holds(tmp_path):
    run = RunFiles(tmp_path / "run")
    run.path.mkdir()
    save_checkpoint(run.last, {"bundle": tiny_bundle(0).to_state()})
    with pytest.raises(InputError, match=f"{run.path} is a folder, not a model file: .*model files in it: last.pt"):
        resolve_model(run.path)


def test_a_file_that_is_no_model_and_a_name_that_is_no_release_are_errors(tmp_path):
    scripted = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(scripted))
    with pytest.raises(InputError, match="refused: a TorchScript archive"):
        resolve_model(scripted)
    with pytest.raises(ReleasedModelError, match="nothing-here: no such model file, nor a released model"):
        resolve_model("nothing-here")


def test_a_released_name_resolves_to_its_checked_config(tiny_release):
    ref = resolve_model(tiny_release.name, tiny_release.root)
    assert ref.name == tiny_release.name and ref.kind == "released" and ref.path.name.endswith(".safetensors.json")
    assert open_network(ref.path).bundle.model == load_bundle(ref.path).model
