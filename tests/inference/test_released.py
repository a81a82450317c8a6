"""Released models: built from a trained checkpoint, found by name, checked byte for byte, no pickle."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from glioseg.cli import main
from glioseg.inference import released
from glioseg.inference.bundle import load_bundle, sniff
from glioseg.inference.release_build import build_release, half_weights
from glioseg.checkpoint_io import load_checkpoint
from glioseg.run_io import RunFiles

from ._fakes import LPS, write_case
from ._release import RESULTS, install_copy, make_release


@pytest.fixture
def copy(tiny_release, tmp_path, monkeypatch):
    """A private copy of the release that a test may damage, installed as the package's."""
    return install_copy(tiny_release.root, tmp_path, monkeypatch)


def test_the_release_holds_no_pickle_and_indexes_every_file(tiny_release):
    folder = tiny_release.root / tiny_release.name
    files = sorted(p.name for p in folder.iterdir())
    name = tiny_release.name
    assert files == sorted([f"{name}.safetensors", f"{name}.safetensors.json", "MODEL_CARD.md"])
    assert sniff(folder / f"{tiny_release.name}.safetensors") == "safetensors"
    entry = released.entry(tiny_release.name, tiny_release.root)
    assert set(entry["files"]) == set(files)
    assert entry["dice"]["WT"] == {"mean": 0.5, "sd": 0.1, "median": 0.5, "n": 2}   # median of the per-case values


def test_the_training_cases_of_the_run_are_recorded_in_index_and_card(tiny_release):
    trained = RunFiles(tiny_release.checkpoint.parent).read_split()["train"]
    entry = released.entry(tiny_release.name, tiny_release.root)
    assert entry["training_cases"] == sorted(trained) and trained
    card = (tiny_release.root / tiny_release.name / "MODEL_CARD.md").read_text()
    assert f"trained on {len(trained)} cases: {', '.join(sorted(trained))}" in card


def test_loads_by_name_with_the_checkpoints_weights_in_the_stored_dtype(tiny_release):
    bundle = load_bundle(released.verified_config(tiny_release.name, tiny_release.root))
    trained = load_checkpoint(tiny_release.checkpoint)["bundle"]["weights"]
    dtype = released.entry(tiny_release.name, tiny_release.root)["dtype"]
    expected = half_weights(trained) if dtype == "float16" else trained
    assert set(bundle.weights) == set(expected)
    assert all(torch.equal(bundle.weights[k], expected[k]) for k in expected)
    assert bundle.build_model() is not None


def test_fp16_is_stored_only_when_its_labels_agree(tmp_path):
    # No Dice exceeds 1: with a threshold above it the agreement check must choose fp32.
    strict = make_release(tmp_path, fp16_threshold=1.01)
    entry = released.entry(strict.name, strict.root)
    assert entry["dtype"] == "float32"
    weights = load_file(str(strict.root / strict.name / f"{strict.name}.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    card = (strict.root / strict.name / "MODEL_CARD.md").read_text()
    assert "float32 safetensors" in card and "≥ 1.01" in card
    assert all(0 <= v <= 1 for v in entry["fp16_agreement"].values())


def test_the_card_states_terms_inputs_recipe_and_measured_dice(tiny_release):
    card = (tiny_release.root / tiny_release.name / "MODEL_CARD.md").read_text()
    trained = RunFiles(tiny_release.checkpoint.parent).read_split()["train"]
    # phantoms are no BraTS release: the card says it cannot state their terms (test_model_card has the BraTS texts)
    for text in (f"{len(trained)} training case(s) come from no source glioseg recognises by name",
                 "skull-stripped", "1 mm", "Not for clinical decisions", "T1ce",
                 RESULTS["method"], "| WT | 0.500 | 0.100 | 0.500 | 2 |", "| TC | 0.400 | 0.200 |  | 2 |",
                 "| a | 0.400 |", RESULTS["notes"], "optimiser steps of these weights", "the test machine"):
        assert text in card, text
    assert "an ensemble" not in card and "held out by" not in card


@pytest.mark.parametrize("file", ["safetensors", "safetensors.json", "card"])
def test_a_changed_byte_is_refused_naming_the_file(copy, tiny_release, file):
    path = copy / tiny_release.name / ("MODEL_CARD.md" if file == "card" else f"{tiny_release.name}.{file}")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(released.ReleasedModelError, match=rf"{path.name}: SHA-256 .* differs"):
        released.verified_config(tiny_release.name)


def test_a_missing_file_is_an_error(copy, tiny_release):
    (copy / tiny_release.name / "MODEL_CARD.md").unlink()
    with pytest.raises(released.ReleasedModelError, match="MODEL_CARD.md: listed in .* but missing"):
        released.verify(tiny_release.name)


def test_an_unknown_name_lists_the_released_ones(copy, tiny_release, tmp_path, caplog):
    assert main(["predict", str(tmp_path), "--model", "no-such-model", "--out", str(tmp_path / "out")]) == 2
    assert f"unknown released model 'no-such-model'; released models: {tiny_release.name}" in caplog.text
    assert not (tmp_path / "out").exists()


def test_predict_by_name_without_a_checkpoint(copy, tiny_release, tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    assert main(["predict", str(folder), "--model", tiny_release.name, "--out", str(tmp_path / "pred")]) == 0
    sidecar = json.loads((tmp_path / "pred" / f"{folder.name}.json").read_text())
    files = released.entry(tiny_release.name)["files"]
    assert sidecar["models"][0]["sha256"] == files[f"{tiny_release.name}.safetensors"]
    assert (tmp_path / "pred" / f"{folder.name}.nii.gz").is_file()


def test_model_and_checkpoint_form_an_ensemble(copy, tiny_release, tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    argv = ["predict", str(folder), "--model", tiny_release.name, "--checkpoint", str(tiny_release.checkpoint),
            "--out", str(tmp_path / "pred")]
    assert main(argv) == 0
    sidecar = json.loads((tmp_path / "pred" / f"{folder.name}.json").read_text())
    assert len(sidecar["models"]) == 2


def test_export_round_trip_by_name(copy, tiny_release, tmp_path):
    out = tmp_path / "again.safetensors"
    assert main(["export", tiny_release.name, "--format", "safetensors", "--out", str(out)]) == 0
    shipped = load_bundle(released.verified_config(tiny_release.name))
    again = load_bundle(out)
    assert again.metadata() == shipped.metadata()
    assert all(torch.equal(again.weights[k], v) for k, v in shipped.weights.items())


def test_export_of_an_unknown_name_lists_the_released_ones(copy, tiny_release, tmp_path, caplog):
    out = tmp_path / "out" / "x.safetensors"
    assert main(["export", "nothing-here", "--format", "safetensors", "--out", str(out)]) == 2
    assert f"nothing-here: no such model file, nor a released model (released: {tiny_release.name})" in caplog.text
    assert not out.parent.exists()


def test_models_released_lists_name_network_params_dice_and_size(copy, tiny_release, tmp_path, capsys):
    assert main(["models", "--released", "--json", str(tmp_path / "released.json")]) == 0
    rows = json.loads((tmp_path / "released.json").read_text())
    assert [r["name"] for r in rows] == [tiny_release.name] and rows[0]["status"] == "ok"
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(tiny_release.name))
    entry = released.entry(tiny_release.name)
    size = sum((copy / tiny_release.name / f).stat().st_size for f in entry["files"]) / 1e6
    for text in ("segresnet", f"{entry['params']:,d}", "0.500±0.100", f"{size:.1f}", entry["dtype"], "ok"):
        assert text in line, text


def test_an_existing_release_is_not_overwritten_without_replace(tiny_release):
    with pytest.raises(ValueError, match="exists; pass --replace"):
        build_release(tiny_release.checkpoint, tiny_release.name, tiny_release.results, [tiny_release.data],
                      root=tiny_release.root)
