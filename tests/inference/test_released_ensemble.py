"""A released model that is an ensemble of fold models: built from several checkpoints, every member
checked, predicted as the averaged ensemble, listed with its members, exported member by member;
its card gives the fold models' held-out Dice (median, per case, the fold that held it out)."""
from __future__ import annotations

import importlib.util
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.checkpoint_io import load_checkpoint
from glioseg.cli import main
from glioseg.errors import InputError
from glioseg.inference import released
from glioseg.inference.bundle import load_bundle
from glioseg.inference.model_ref import resolve_model
from glioseg.inference.release_build import build_release
from glioseg.training.checkpoint import save_checkpoint

from ._fakes import LPS, REPO, write_case
from ._release import install_copy


@pytest.fixture
def installed(tiny_ensemble, tmp_path, monkeypatch):
    """A private copy of the ensemble's released/ folder, installed as the package's."""
    return install_copy(tiny_ensemble.root, tmp_path, monkeypatch)


def test_members_are_indexed_as_a_list_with_their_training_cases(tiny_ensemble):
    name = tiny_ensemble.name
    files = sorted(p.name for p in (tiny_ensemble.root / name).iterdir())
    members = [f"{name}-fold0.safetensors", f"{name}-fold1.safetensors"]
    assert files == sorted([*members, *(m + ".json" for m in members), "MODEL_CARD.md"])
    index = released.read_index(tiny_ensemble.root)
    assert index["version"] == 2
    entry = index["models"][name]
    assert entry["weights"] == members and set(entry["files"]) == set(files)
    splits = [load_checkpoint(c)["split"]["train"] for c in tiny_ensemble.checkpoints]
    assert entry["member_training_cases"] == {m: sorted(s) for m, s in zip(members, splits)}
    assert entry["training_cases"] == sorted(set(splits[0]) | set(splits[1]))
    assert entry["dtype"] == "float32" and entry["dice"]["WT"]["median"] == 0.42


def test_every_member_holds_its_checkpoints_weights(tiny_ensemble):
    configs = released.verified_configs(tiny_ensemble.name, tiny_ensemble.root)
    assert [c.name for c in configs] == [f"{tiny_ensemble.name}-fold{k}.safetensors.json" for k in (0, 1)]
    for config, checkpoint in zip(configs, tiny_ensemble.checkpoints):
        trained = load_checkpoint(checkpoint)["bundle"]["weights"]
        weights = load_bundle(config).weights
        assert all(torch.equal(weights[k], v.float()) for k, v in trained.items())
    with pytest.raises(released.ReleasedModelError, match=r"an ensemble of 2 models \(tiny-ensemble-fold0"):
        released.verified_config(tiny_ensemble.name, tiny_ensemble.root)


def _labels(folder, case) -> np.ndarray:
    return np.asarray(nib.load(folder / f"{case}.nii.gz").dataobj)


def test_predict_by_name_equals_the_members_checkpoints_averaged(installed, tiny_ensemble, tmp_path):
    case, _ = write_case(tmp_path / "data", LPS)
    by_name, by_files = tmp_path / "by-name", tmp_path / "by-files"
    assert main(["predict", str(case), "--model", tiny_ensemble.name, "--out", str(by_name)]) == 0
    assert main(["predict", str(case), "--checkpoint", *map(str, tiny_ensemble.checkpoints),
                 "--out", str(by_files)]) == 0
    sidecar = json.loads((by_name / f"{case.name}.json").read_text())
    assert len(sidecar["models"]) == 2
    files = released.entry(tiny_ensemble.name)["files"]
    assert [m["sha256"] for m in sidecar["models"]] == [files[f"{tiny_ensemble.name}-fold{k}.safetensors"]
                                                        for k in (0, 1)]
    assert np.array_equal(_labels(by_name, case.name), _labels(by_files, case.name))


def test_a_damaged_member_is_named(installed, tiny_ensemble, tmp_path, caplog):
    path = installed / tiny_ensemble.name / f"{tiny_ensemble.name}-fold1.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    case, _ = write_case(tmp_path / "data", LPS)
    assert main(["predict", str(case), "--model", tiny_ensemble.name, "--out", str(tmp_path / "pred")]) == 2
    assert f"{path}: SHA-256" in caplog.text and "differs" in caplog.text
    assert not (tmp_path / "pred" / f"{case.name}.nii.gz").exists()


def test_an_old_index_of_single_files_still_loads(tiny_release, tmp_path, monkeypatch):
    root = tmp_path / "released"
    shutil.copytree(tiny_release.root, root)
    index = json.loads((root / "index.json").read_text())
    assert isinstance(index["models"][tiny_release.name]["weights"], str)
    (root / "index.json").write_text(json.dumps({**index, "version": 1}))
    ref = resolve_model(tiny_release.name, root)
    assert not ref.is_ensemble and ref.path.name == f"{tiny_release.name}.safetensors.json"
    (root / "index.json").write_text(json.dumps({**index, "version": 3}))
    with pytest.raises(released.ReleasedModelError, match="of a version this glioseg reads .*it says 3"):
        released.read_index(root)


def test_models_released_shows_the_members(installed, tiny_ensemble, tmp_path, capsys):
    assert main(["models", "--released", "--json", str(tmp_path / "rows.json")]) == 0
    row = next(r for r in json.loads((tmp_path / "rows.json").read_text()) if r["name"] == tiny_ensemble.name)
    assert row["members"] == 2 and row["status"] == "ok"
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(tiny_ensemble.name))
    assert line.split()[1:4] == ["segresnet", "2", f"{row['params']:,d}"]


def test_export_writes_every_member_beside_out(installed, tiny_ensemble, tmp_path, capsys):
    out = tmp_path / "deploy" / "seg.safetensors"
    assert main(["export", tiny_ensemble.name, "--format", "safetensors", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "seg-fold0.safetensors", "seg-fold0.safetensors.json", "seg-fold1.safetensors", "seg-fold1.safetensors.json"]
    for k, config in enumerate(released.verified_configs(tiny_ensemble.name)):
        shipped, again = load_bundle(config), load_bundle(out.parent / f"seg-fold{k}.safetensors")
        assert all(torch.equal(again.weights[n], v) for n, v in shipped.weights.items())
    printed = capsys.readouterr().out
    assert "ensemble of 2 models" in printed and f"--checkpoint {out.parent / 'seg-fold0.safetensors'}" in printed


@pytest.mark.slow
def test_onnx_members_predict_like_the_released_ensemble(installed, tiny_ensemble, tmp_path, capsys):
    """What ``export NAME --format onnx`` prints, done: ``predict --onnx`` with every member file
    averages them as ``--model NAME`` does; each member's config carries the model's post-processing
    setting, which ``predict --onnx`` reads from it."""
    out = tmp_path / "deploy" / "seg.onnx"
    assert main(["export", tiny_ensemble.name, "--format", "onnx", "--out", str(out)]) == 0
    files = [out.parent / f"seg-fold{k}.onnx" for k in (0, 1)]
    assert f"--onnx {files[0]} {files[1]}" in capsys.readouterr().out
    for k, config in enumerate(released.verified_configs(tiny_ensemble.name)):
        exported = json.loads((out.parent / f"seg-fold{k}.onnx.json").read_text())["bundle"]
        assert exported["postprocess"] == load_bundle(config).postprocess
    case, _ = write_case(tmp_path / "data", LPS)
    by_name, by_onnx = tmp_path / "by-name", tmp_path / "by-onnx"
    assert main(["predict", str(case), "--model", tiny_ensemble.name, "--out", str(by_name),
                 "--precision", "fp32"]) == 0   # ONNX computes in fp32
    assert main(["predict", str(case), "--onnx", *map(str, files), "--out", str(by_onnx)]) == 0
    record = json.loads((by_onnx / f"{case.name}.json").read_text())
    assert [m["runtime"] for m in record["models"]] == ["onnxruntime"] * 2
    assert (_labels(by_name, case.name) == _labels(by_onnx, case.name)).mean() > 0.9999


def test_one_file_from_an_ensemble_reference_is_an_error_naming_the_members(tiny_ensemble):
    ref = resolve_model(tiny_ensemble.name, tiny_ensemble.root)
    assert ref.is_ensemble and len(ref.files) == 2
    with pytest.raises(InputError, match=r"ensemble of 2 models \(tiny-ensemble-fold0.safetensors, "
                                         r"tiny-ensemble-fold1.safetensors\)"):
        ref.path


def test_the_card_lists_members_and_the_fold_models_held_out_dice(tiny_ensemble):
    card = (tiny_ensemble.root / tiny_ensemble.name / "MODEL_CARD.md").read_text()
    for text in ("an ensemble of 2 models (fold0, fold1)", "| member | file | optimiser steps |",
                 "held-out Dice of the fold models",
                 "| region | mean | sd | median | n |", "| 0.420 |", "| case | held out by | WT | TC | ET |",
                 "the fp16-rounded ensemble's labels (all members rounded) agree with the fp32 ensemble's"):
        assert text in card, text
    for case, fold in tiny_ensemble.held_out_by.items():
        assert f"| {case} | {fold} | " in card
    for k, checkpoint in enumerate(tiny_ensemble.checkpoints):
        state = load_checkpoint(checkpoint)
        cases = sorted(state["split"]["train"])
        assert f"- fold{k} trained on {len(cases)} cases: {', '.join(cases)}" in card
        row = f"| fold{k} | `tiny-ensemble-fold{k}.safetensors` | {state['progress']['step']} | "
        assert row in card and card.split(row)[1].split("\n")[0].endswith(f" | {len(cases)} |")


def _changed_copy(checkpoint, out, **bundle_changes):
    state = load_checkpoint(checkpoint)
    state["bundle"] = {**state["bundle"], **bundle_changes}
    out.mkdir(parents=True)
    return save_checkpoint(out / "last.pt", state)


@pytest.mark.parametrize("field", ["channels", "postprocess"])
def test_a_member_that_differs_is_refused_naming_its_checkpoint(tiny_ensemble, tmp_path, field):
    first = tiny_ensemble.checkpoints[0]
    channels = load_checkpoint(first)["bundle"]["channels"]
    change = {"channels": list(reversed(channels)), "postprocess": {"min_et_mm3": 100.0}}[field]
    other = _changed_copy(first, tmp_path / "other", **{field: change})
    with pytest.raises(InputError, match=rf"{other}: its {field} .* differs from .* of {first}"):
        build_release([first, other], "x1", tiny_ensemble.results, [tiny_ensemble.data], root=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_checkpoints_out_of_fold_order_are_refused(tiny_ensemble, tmp_path):
    if not set(tiny_ensemble.held_out_by.values()) >= {"fold0", "fold1"}:
        pytest.skip("the two tiny runs drew the same validation case")
    swapped = list(reversed(tiny_ensemble.checkpoints))
    with pytest.raises(InputError, match="member fold[01] trained on .* held out; give the checkpoints in fold order"):
        build_release(swapped, "x1", tiny_ensemble.results, [tiny_ensemble.data], root=tmp_path / "r")


def _release_tool():
    spec = importlib.util.spec_from_file_location("release_model_tool", REPO / "tools" / "release_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_takes_several_checkpoints_and_exits_2_naming_a_mismatch(tiny_ensemble, tmp_path, caplog):
    tool = _release_tool()
    args = tool.parse(["a/last.pt", "b/last.pt", "c/last.pt", "--name", "n1", "--results", "r.json", "--cases", "x"])
    assert [str(c) for c in args.checkpoint] == ["a/last.pt", "b/last.pt", "c/last.pt"]
    first = tiny_ensemble.checkpoints[0]
    other = _changed_copy(first, tmp_path / "other", scheme="brats2023")
    argv = [str(first), str(other), "--name", "n1", "--results", str(tiny_ensemble.results),
            "--cases", str(tiny_ensemble.data), "--root", str(tmp_path / "r")]
    assert tool.main(argv) == 2
    assert f"{other}: its scheme 'brats2023' differs from 'brats'" in caplog.text
    assert not (tmp_path / "r").exists()


def test_the_chosen_postprocessing_travels_into_every_member_index_and_card(tiny_ensemble, tmp_path):
    # glioseg experiment postprocess's result file: its recommended setting is what ships
    choice = tmp_path / "postprocess-release.json"
    choice.write_text(json.dumps({"kind": "glioseg-postprocess-choice", "chosen": {"min_tumour_mm3": 9.0},
                                  "recommended": {"min_tumour_mm3": 500.0, "min_et_mm3": 100.0}}))
    tool = _release_tool()
    argv = [*map(str, tiny_ensemble.checkpoints), "--name", "n2", "--results", str(tiny_ensemble.results),
            "--cases", str(tiny_ensemble.data), "--root", str(tmp_path / "r"), "--postprocess", str(choice)]
    assert tool.main(argv) == 0
    entry = released.entry("n2", tmp_path / "r")
    assert entry["postprocess"] == {"min_tumour_mm3": 500.0, "min_et_mm3": 100.0}
    for member in entry["weights"]:
        bundle = load_bundle(tmp_path / "r" / "n2" / f"{member}.json")
        assert bundle.postprocess == {"min_tumour_mm3": 500.0, "min_et_mm3": 100.0}
    card = (tmp_path / "r" / "n2" / "MODEL_CARD.md").read_text()
    assert "## Post-processing" in card and "ET < 100 mm^3 relabelled core" in card
    assert "tta" not in entry and "## Flips" not in card and not bundle.tta
    # a choice made on flipped probabilities (experiment postprocess --tta): the model flips by default
    flipped = tmp_path / "postprocess-release-tta.json"
    flipped.write_text(json.dumps({**json.loads(choice.read_text()), "tta": True}))
    assert tool.main([*argv[:-1], str(flipped), "--replace"]) == 0
    entry = released.entry("n2", tmp_path / "r")
    assert entry["tta"] is True
    assert all(load_bundle(tmp_path / "r" / "n2" / f"{m}.json").tta for m in entry["weights"])
    assert "## Flips" in (tmp_path / "r" / "n2" / "MODEL_CARD.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"min_tumour_mm3": -1}))
    assert tool.main([*argv[:-1], str(bad)]) == 2
