"""The HTML report: self-contained, one embedded PNG per figure, the tables; the CLI's rules."""
from __future__ import annotations

import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.formats import discover
from glioseg.evaluation.evaluate import evaluate
from glioseg.evaluation.report import cases_from_dataset, load_metrics, write_report

from ._synthetic import LPS, brats_label, write_brats_case, write_run

SHAPE = (32, 32, 24)
CASES = ("Brats18_TEST_001_1", "Brats18_TEST_002_1")


@pytest.fixture
def evaluated(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    for n, case in enumerate(CASES):
        label = brats_label(SHAPE, np.random.default_rng(n), (14, 16, 12))
        write_brats_case(root, case, label, seed=n)
        nib.save(nib.Nifti1Image(np.roll(label, n, axis=1), LPS), str(pred / f"{case}.nii.gz"))
    evaluate(pred, root, tmp_path / "eval")
    return root, pred, tmp_path / "eval"


def _sources(html: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', html)


def test_report_embeds_one_png_per_figure_and_the_tables(evaluated, tmp_path):
    root, pred, metrics_dir = evaluated
    rows, summary = load_metrics(metrics_dir)
    run = write_run(tmp_path / "run")
    out = write_report(tmp_path / "r.html", cases=cases_from_dataset(discover(root), pred), metrics=rows,
                       summary=summary, run_dir=run, with_viewer=False)
    html = out.read_text()
    sources = _sources(html)
    assert len(sources) == len(CASES) + 1  # a figure per case + the training curves
    assert all(s.startswith("data:image/png;base64,iVBORw0KGgo") for s in sources)  # base64 of the PNG magic
    for needle in ("Evaluation summary", "Per case", "Volumes", "Training run", "Precision events (3",
                   "grad_norm_z", "373.13", "Radiological convention", *CASES):
        assert needle in html
    assert html.count("<table>") == 5  # summary, per case, volumes, last epoch, precision events
    assert "<script" not in html and "http" not in html
    assert not list(tmp_path.glob(".part-*"))


def test_report_cli_draws_references_alone_with_their_volumes(evaluated, tmp_path, capsys):
    root, _, _ = evaluated
    out = tmp_path / "ref.html"
    assert main(["report", "--data", str(root), "--out", str(out), "--max-cases", "1",
                 "--convention", "neurological"]) == 0
    html = out.read_text()
    assert len(_sources(html)) == 1 and "1 of 2 cases drawn (--max-cases 1)" in html
    assert "Volumes (cases drawn below)" in html and "WT reference mL" in html
    assert "Neurological convention" in html
    assert "wrote" in capsys.readouterr().out


def test_report_of_a_run_alone(tmp_path):
    out = tmp_path / "run.html"
    assert main(["report", "--run", str(write_run(tmp_path / "run", events=False)), "--out", str(out)]) == 0
    html = out.read_text()
    assert len(_sources(html)) == 1 and "Training run" in html and "Precision events" not in html


def test_msd_four_dimensional_images_are_drawn(tmp_path):
    """MSD stores the four channels in one 4-D file with a RAS affine; labels 1 edema, 2 core, 3 ET."""
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(300, 30, (*SHAPE, 4)).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[10:20, 10:20, 8:16], label[12:18, 12:18, 10:14], label[14:16, 14:16, 11:13] = 1, 2, 3
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / "BRATS_001.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / "BRATS_001.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}]}))
    out = write_report(tmp_path / "msd.html", cases=cases_from_dataset(discover(root)))
    html = out.read_text()
    assert len(_sources(html)) == 1 and "BRATS_001" in html
    assert "<td>0.8</td>" in html  # WT: 10·10·8 voxels of 1 mm³


@pytest.mark.parametrize("argv, needle", [
    (["report", "--out", "x.html"], "nothing to report"),
    (["report", "--pred", "p", "--out", "x.html"], "--pred needs --data"),
])
def test_report_cli_rejects_incomplete_arguments(tmp_path, caplog, argv, needle):
    with caplog.at_level(logging.ERROR, logger="glioseg"):
        assert main(argv) == 2
    assert needle in caplog.text
