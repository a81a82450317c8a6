"""``glioseg demo``: part (a) runs a released model on the bundled real case; the closing lines
report its Dice and the precision decision of part (b)'s training run, read from their files."""
from __future__ import annotations

import json

import pytest

from glioseg.commands import demo
from glioseg.data.sample import SAMPLE_CASE
from glioseg.cli import main
from glioseg.inference import released
from glioseg.run_io import RunFiles

from .training._runs import run_inprocess, train_args, write_config


@pytest.fixture
def installed(tiny_release, monkeypatch):
    monkeypatch.setattr(released, "package_root", lambda: tiny_release.root)
    return tiny_release


@pytest.fixture(scope="module")
def demo_out(tiny_release, tmp_path_factory):
    """Part (a) with the tiny release, and a tiny auto-precision training run as part (b)'s run folder."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(released, "package_root", lambda: tiny_release.root)
        assert demo.run_steps(demo.released_steps(out, tiny_release.name), "(a)", main) == 0
    config = write_config(out / "config", precision="auto")
    assert run_inprocess(train_args(tiny_release.data, out / "run", config)) == 0
    return out


def test_no_released_model_skips_part_a(tmp_path, monkeypatch):
    monkeypatch.setattr(released, "package_root", lambda: tmp_path)
    assert demo.demo_model(None) is None


def test_the_default_release_is_preferred_and_unknown_names_fail(installed):
    assert demo.demo_model(None) == installed.name
    assert demo.demo_model(installed.name) == installed.name
    with pytest.raises(released.ReleasedModelError, match=f"released models: {installed.name}"):
        demo.demo_model(demo.DEFAULT_MODEL)


def test_part_a_writes_the_real_case_its_prediction_and_report(demo_out):
    folder = demo_out / "released"
    assert (folder / "data" / "Brats18_TCIA03_265_1" / "NOTICE.md").is_file()
    assert (folder / "predictions" / "Brats18_TCIA03_265_1.nii.gz").is_file()
    assert (folder / "evaluation" / "report.html").stat().st_size > 0
    summary = json.loads((folder / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == ["Brats18_TCIA03_265_1"]
    dice = demo.region_dice(folder / "evaluation")
    assert list(dice) == ["WT", "TC", "ET"] and all(0 <= v <= 1 for v in dice.values())


def test_closing_lines_give_reports_dice_and_the_precision_decision(demo_out, installed):
    lines = "\n".join(demo._closing(demo_out, installed.name))
    dice = demo.region_dice(demo_out / "released" / "evaluation")
    summary = RunFiles(demo_out / "run").read_summary()
    probe = next(e for e in RunFiles(demo_out / "run").read_events() if e["signal"] == "probe")
    for text in (f"WT Dice {dice['WT']:.3f}", f"ET Dice {dice['ET']:.3f}", f"target {summary['target']}",
                 probe["reason"], "held out from this model's training",
                 str(demo_out / "released" / "evaluation" / "report.html"),
                 str(RunFiles(demo_out / "run").report)):
        assert text in lines, text


@pytest.mark.parametrize("cases, says", [(None, "training cases not recorded"),
                                         (["Brats18_CBICA_ABM_1"], "held out from this model's training"),
                                         ([SAMPLE_CASE, "Brats18_CBICA_ABM_1"], "a training case of this model")])
def test_the_dice_line_says_whether_the_sample_was_a_training_case(monkeypatch, cases, says):
    monkeypatch.setattr(demo, "entry", lambda name: {} if cases is None else {"training_cases": cases})
    assert demo.sample_provenance("any").startswith(says)


def test_an_ensemble_says_how_many_of_its_members_trained_on_the_sample(monkeypatch):
    members = {"m-fold0.safetensors": [SAMPLE_CASE, "b"], "m-fold1.safetensors": ["b", "c"],
               "m-fold2.safetensors": [SAMPLE_CASE, "c"]}
    monkeypatch.setattr(demo, "entry", lambda name: {"training_cases": [SAMPLE_CASE, "b", "c"],
                                                     "member_training_cases": members})
    assert demo.sample_provenance("m").startswith("a training case of 2 of this ensemble's 3 members, so not "
                                                  "a held-out score")


def test_without_a_release_the_closing_lines_have_only_part_b(demo_out):
    lines = demo._closing(demo_out, None)
    assert len(lines) == 2 and lines[0].startswith("(b)")


def test_a_used_demo_folder_is_refused(tmp_path, caplog):
    (tmp_path / "released").mkdir()
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "a demo was already run here" in caplog.text


@pytest.mark.parametrize("with_release", [True, False])
def test_part_a_runs_first_and_only_with_a_release(with_release, tiny_release, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(released, "package_root", lambda: tiny_release.root if with_release else tmp_path)
    commands = []
    monkeypatch.setattr(demo, "run_steps", lambda steps, label, main: commands.extend(s[0] for s in steps) or 0)
    monkeypatch.setattr(demo, "_closing", lambda out, model, seconds: [f"model {model}, parts {sorted(seconds)}"])
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    part_b = ["phantom", "verify", "preprocess", "train", "predict", "evaluate"]
    assert commands == (["sample", "predict", "evaluate"] if with_release else []) + part_b
    model, parts = (tiny_release.name, ["a", "b"]) if with_release else (None, ["b"])
    assert f"model {model}, parts {parts}" in capsys.readouterr().out
