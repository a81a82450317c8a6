"""``glioseg evaluate`` end to end on a tiny synthetic BraTS dataset, and on two real cases."""
from __future__ import annotations

import csv
import json
import logging
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from glioseg.cli import main
from glioseg.data.labels import get_scheme, labels_to_regions
from glioseg.evaluation.evaluate import COLUMNS, evaluate
from glioseg.evaluation.metrics import HD95_ONE_EMPTY_MM

from ..conftest import BRATS2023_SUFFIX
from ._synthetic import LPS, brats_label, write_brats_case

SHAPE = (32, 32, 24)
CASES = ("Brats18_TEST_001_1", "Brats18_TEST_002_1", "Brats18_TEST_003_1")


@pytest.fixture
def dataset(tmp_path):
    """Three BraTS-layout cases; predictions: exact, shifted by 2 voxels, and exact."""
    root, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    for n, case in enumerate(CASES):
        label = brats_label(SHAPE, np.random.default_rng(n), (16 + n, 15, 12))
        write_brats_case(root, case, label, seed=n, label_dtype=np.int16 if n == 2 else np.uint8)
        guess = np.roll(label, 2, axis=0) if n == 1 else label
        nib.save(nib.Nifti1Image(guess.astype(np.uint8), LPS), str(pred / f"{case}.nii.gz"))
    return root, pred


def _rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_evaluate_writes_metrics_summary_and_report(dataset, tmp_path, capsys):
    root, pred = dataset
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out), "--max-cases", "2"]) == 0
    columns, rows = _rows(out / "metrics.csv")
    assert tuple(columns) == COLUMNS == ("case", "region", "dice", "hd95", "sensitivity", "specificity",
                                         "pred_ml", "ref_ml")
    assert [(r["case"], r["region"]) for r in rows] == [(c, reg) for c in CASES for reg in ("WT", "TC", "ET")]
    exact = [r for r in rows if r["case"] != CASES[1]]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in exact)
    shifted = [r for r in rows if r["case"] == CASES[1]]
    assert all(0.2 < float(r["dice"]) < 1.0 and float(r["hd95"]) == pytest.approx(2.0) for r in shifted)
    assert all(r["pred_ml"] == r["ref_ml"] for r in shifted)  # a pure shift keeps the volume
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheme"] == "brats" and "373.13" in summary["empty_mask_convention"]
    assert set(summary["regions"]["WT"]["dice"]) == {"mean", "std", "median", "q1", "q3", "n"}
    assert summary["regions"]["ET"]["dice"]["n"] == 3
    html = (out / "report.html").read_text()
    assert html.count("src=\"data:image/png;base64,") == 2 and "2 of 3 cases drawn (--max-cases 2)" in html
    assert all(case in html for case in CASES)  # the tables list every case
    printed = capsys.readouterr().out
    assert "WT" in printed and "373.13" in printed


def _expect_error(argv, caplog, *needles):
    with caplog.at_level(logging.ERROR, logger="glioseg"):
        assert main(argv) == 2
    message = caplog.text
    for needle in needles:
        assert needle in message
    return message


def test_geometry_mismatch_names_both_files_and_writes_nothing(dataset, tmp_path, caplog):
    root, pred = dataset
    shifted = LPS.copy()
    shifted[0, 3] = 1.0
    label = nib.load(str(pred / f"{CASES[0]}.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), str(pred / f"{CASES[0]}.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 23), np.uint8), LPS), str(pred / f"{CASES[1]}.nii.gz"))
    out = tmp_path / "out"
    _expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out)], caplog,
                  "2 of 3 cases failed", f"{CASES[0]}.nii.gz: affine differs from the reference",
                  f"{CASES[0]}_seg.nii.gz", "shape (32, 32, 23) differs", f"{CASES[1]}_seg.nii.gz")
    assert not out.exists()


@pytest.mark.parametrize("values, needle", [((3,), "label values not in the brats scheme: 3 (64 voxels)"),
                                            ((1.5,), "whole numbers")])
def test_label_values_are_checked_against_the_scheme(dataset, tmp_path, caplog, values, needle):
    root, pred = dataset
    label = np.zeros(SHAPE, dtype=np.float32 if isinstance(values[0], float) else np.uint8)
    label[10:14, 10:14, 10:14] = values[0]
    nib.save(nib.Nifti1Image(label, LPS), str(pred / f"{CASES[2]}.nii.gz"))
    _expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(tmp_path / "o")],
                  caplog, f"{CASES[2]}.nii.gz", needle)


def test_missing_predictions_policies(dataset, tmp_path, caplog):
    root, pred = dataset
    (pred / f"{CASES[2]}.nii.gz").unlink()
    _expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(tmp_path / "o")],
                  caplog, "no prediction <case>.nii.gz for 1 of 3 cases", CASES[2])
    empty = evaluate(pred, root, tmp_path / "empty", missing="empty")
    scored = [r for r in empty.rows if r["case"] == CASES[2]]
    assert [(r["dice"], r["hd95"], r["pred_ml"]) for r in scored] == [(0.0, HD95_ONE_EMPTY_MM, 0.0)] * 3
    assert empty.summary["missing_predictions"] == {"policy": "empty", "cases": [CASES[2]],
                                                    "meaning": "scored as empty predictions"}
    skipped = evaluate(pred, root, tmp_path / "skip", missing="skip")
    assert {r["case"] for r in skipped.rows} == set(CASES[:2])


def test_process_pool_gives_the_same_rows(dataset, tmp_path):
    root, pred = dataset
    serial = evaluate(pred, root, tmp_path / "a", workers=1)
    parallel = evaluate(pred, root, tmp_path / "b", workers=2)
    assert serial.rows == parallel.rows
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


@pytest.mark.realdata
def test_real_cases_against_themselves_and_against_monai(brats18, tmp_path):
    cases = ("Brats18_TCIA03_265_1", "Brats18_CBICA_ABM_1")
    exact, shifted = tmp_path / "exact", tmp_path / "shifted"
    exact.mkdir(), shifted.mkdir()
    references = {}
    for case in cases:
        ref = nib.load(str(brats18 / case / f"{case}_seg.nii.gz"))
        references[case] = np.asarray(ref.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(references[case], ref.affine, ref.header), str(exact / f"{case}.nii"))
        moved = np.roll(references[case], (3, -2, 1), axis=(0, 1, 2))
        nib.save(nib.Nifti1Image(moved, ref.affine, ref.header), str(shifted / f"{case}.nii"))
    result = evaluate(exact, brats18, tmp_path / "e1", missing="skip")
    assert len(result.rows) == 6 and all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in result.rows)
    result = evaluate(shifted, brats18, tmp_path / "e2", missing="skip")
    scheme = get_scheme("brats")
    for case in cases:
        moved = np.roll(references[case], (3, -2, 1), axis=(0, 1, 2))
        p = torch.from_numpy(labels_to_regions(moved, scheme)[None].astype(np.float32))
        r = torch.from_numpy(labels_to_regions(references[case], scheme)[None].astype(np.float32))
        monai_dice = DiceMetric(include_background=True)(y_pred=p, y=r)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monai_hd = HausdorffDistanceMetric(include_background=True, percentile=95)(
                y_pred=p, y=r, spacing=[1.0, 1.0, 1.0])[0]
        ours = [row for row in result.rows if row["case"] == case]
        for region, row in enumerate(ours):
            assert row["dice"] == pytest.approx(float(monai_dice[region]), abs=1e-6)
            assert row["hd95"] == pytest.approx(float(monai_hd[region]), abs=1e-3)
            assert 0.3 < row["dice"] < 1.0


def _with_brats2023_names(folder, case):
    """A BraTS 2018-layout case folder renamed to BraTS 2023's file names (-t2f, -t1n, ..., -seg)."""
    for old, new in BRATS2023_SUFFIX.items():
        (folder / f"{case}_{old}.nii.gz").rename(folder / f"{case}-{new}.nii.gz")


def test_a_brats2023_named_reference_with_2021_values_is_refused(tmp_path, caplog):
    """#23: the reference's label 4 read as a 2024 resection cavity scored ET on nothing."""
    root, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    case = "BraTS-GLI-00001-000"
    label = brats_label(SHAPE, np.random.default_rng(0), (16, 15, 12))      # 1, 2, 4: the 2021 values
    _with_brats2023_names(write_brats_case(root, case, label), case)
    nib.save(nib.Nifti1Image(label, LPS), str(pred / f"{case}.nii.gz"))
    _expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(tmp_path / "o")], caplog,
                  f"{case}-seg.nii.gz: holds label 4 and no label 3", '"scheme": "brats"')
    assert not (tmp_path / "o").exists()


def test_a_new_evaluation_replaces_every_output_of_an_older_one(dataset, tmp_path, monkeypatch):
    """#23: --no-report (or a kill while drawing) left the older report.html beside new metrics."""
    from glioseg.commands import evaluate as command

    root, pred = dataset
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out)]
    assert main(argv) == 0 and (out / "report.html").is_file()
    assert main([*argv, "--no-report"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]
    assert main(argv) == 0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(command, "write_report", killed)
    assert main(argv) == 130
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]


def _brats2023_case(root, pred, case, seed, shift=0):
    """A BraTS 2023-named case (labels 1 NCR, 2 ED, 3 ET) and its prediction in that convention."""
    label = brats_label(SHAPE, np.random.default_rng(seed), (16, 15, 12))
    label[label == 4] = 3
    _with_brats2023_names(write_brats_case(root, case, label), case)
    nib.save(nib.Nifti1Image(np.roll(label, shift, axis=0), LPS), str(pred / f"{case}.nii.gz"))


def test_several_reference_datasets_each_in_its_own_convention(dataset, tmp_path, capsys, caplog):
    """Two folders (BraTS 2018 values beside BraTS 2023 values) scored together, with a summary per
    dataset; the 2023 case's 3 is its enhancing tumour, not an unknown value."""
    root, pred = dataset
    newer = tmp_path / "brats23"
    _brats2023_case(newer, pred, "BraTS-GLI-00001-000", seed=7)
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), str(newer), "--out", str(out),
                 "--max-cases", "1", "--no-viewer"]) == 0
    assert all(case in (out / "report.html").read_text() for case in (*CASES, "BraTS-GLI-00001-000"))
    _, rows = _rows(out / "metrics.csv")
    assert [r["case"] for r in rows[::3]] == [*CASES, "BraTS-GLI-00001-000"]
    assert all(float(r["dice"]) == 1.0 for r in rows if r["case"] == "BraTS-GLI-00001-000")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheme"] == "per dataset" and summary["regions"]["ET"]["dice"]["n"] == 4
    parts = summary["datasets"]
    assert list(parts) == ["data", "brats23"]
    assert parts["brats23"]["scheme"] == "brats2023" and parts["brats23"]["cases"] == ["BraTS-GLI-00001-000"]
    assert parts["data"]["regions"]["WT"]["dice"]["n"] == 3 and parts["brats23"]["regions"]["ET"]["dice"]["mean"] == 1.0
    assert "brats23 (1 cases): Dice WT 1.000" in capsys.readouterr().out
    # one case id in both folders: refused before anything is written, naming both places
    again = tmp_path / "again"
    write_brats_case(again, CASES[0], brats_label(SHAPE, np.random.default_rng(0), (16, 15, 12)))
    _expect_error(["evaluate", "--pred", str(pred), "--ref", str(root), str(again), "--out", str(tmp_path / "o")],
                  caplog, f"{CASES[0]} in data ({root / CASES[0]}) and in again ({again / CASES[0]})")
    assert not (tmp_path / "o").exists()
