"""``glioseg evaluate --metrics``: lesion-wise tables, summary, terminal table and report section."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.labels import get_scheme
from glioseg.errors import InputError
from glioseg.evaluation.lesion_scores import CASE_COLUMNS, LESION_COLUMNS, METRICS, lesion_rows, parse_metrics
from glioseg.evaluation.lesionwise import GENERATIONS, score_lesions

from ._lesion_cases import random_case
from ._synthetic import LPS, write_brats_case

BRATS = get_scheme("brats")


def _brats(label2023: np.ndarray) -> np.ndarray:
    """BraTS 2023 labels → BraTS 2017-2021 values (ET 3 → 4, no cavity)."""
    return np.array([0, 1, 2, 4, 0], dtype=np.uint8)[label2023]


@pytest.fixture
def lesion_dataset(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    for n in range(2):
        ref, guess = random_case(20 + n)
        case = f"Brats18_LES_00{n}_1"
        write_brats_case(root, case, _brats(ref), seed=n)
        nib.save(nib.Nifti1Image(_brats(guess), LPS), str(pred / f"{case}.nii.gz"))
    return root, pred


def _read(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return tuple(reader.fieldnames), list(reader)


def test_evaluate_writes_lesion_tables_summary_and_report(lesion_dataset, tmp_path, capsys):
    root, pred = lesion_dataset
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out),
                 "--metrics", "lesion-2023,lesion-2024,lesion-2025"]) == 0
    columns, rows = _read(out / "lesion_metrics.csv")
    assert columns == CASE_COLUMNS
    per_generation = {m: sorted({r["region"] for r in rows if r["metrics"] == m}) for m in METRICS[1:]}
    assert per_generation == {"lesion-2023": ["ET", "TC", "WT"],
                              "lesion-2024": ["ET", "NETC", "RC", "SNFH", "TC", "WT"],
                              "lesion-2025": ["ET", "NETC", "RC", "SNFH", "TC", "WT"]}
    # the file holds what the engine computes on the same labels
    case = "Brats18_LES_000_1"
    ref = np.asarray(nib.load(str(root / case / f"{case}_seg.nii.gz")).dataobj)
    guess = np.asarray(nib.load(str(pred / f"{case}.nii.gz")).dataobj)
    expected = {s.region: s for s in score_lesions(guess, ref, BRATS, (1.0, 1.0, 1.0), GENERATIONS["lesion-2024"])}
    for row in (r for r in rows if r["case"] == case and r["metrics"] == "lesion-2024"):
        score = expected[row["region"]]
        assert float(row["dice"]) == pytest.approx(score.dice) and int(row["fp"]) == score.fp
    lcolumns, lesions = _read(out / "lesions.csv")
    assert lcolumns == LESION_COLUMNS and lesions
    assert all(float(r["hd95"]) <= 374 for r in lesions)  # infinite HD95 written as the penalty
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == list(METRICS)
    wt = summary["lesionwise"]["lesion-2023"]["regions"]["WT"]
    assert wt["dice"]["n"] == 2 and wt["tp"] == sum(int(r["tp"]) for r in rows
                                                   if r["metrics"] == "lesion-2023" and r["region"] == "WT")
    assert "BraTS-2023-Metrics" in summary["lesionwise"]["lesion-2023"]["source"]
    printed = capsys.readouterr().out
    assert "lesion-2024 (lesion-wise; HD95 penalty 337 mm)" in printed and "lesions.csv" in printed
    page = (out / "report.html").read_text()
    assert "Lesion-wise metrics" in page and "brats-evaluation" in page


def test_region_only_by_default_writes_no_lesion_tables(lesion_dataset, tmp_path):
    """... and removes an older evaluation's lesion tables from its folder."""
    root, pred = lesion_dataset
    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out), "--no-report",
                 "--metrics", "lesion-2023"]) == 0
    assert (out / "lesions.csv").is_file() and (out / "lesion_metrics.csv").is_file()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(out), "--no-report"]) == 0
    assert not (out / "lesion_metrics.csv").exists()
    assert (out / "metrics.csv").is_file() and not (out / "lesions.csv").exists()
    assert "lesionwise" not in json.loads((out / "summary.json").read_text())


def test_metric_names_are_checked():
    assert parse_metrics("lesion-2025") == ("region", "lesion-2025")
    assert parse_metrics(["lesion-2024", "region", "lesion-2023"]) == ("region", "lesion-2023", "lesion-2024")
    with pytest.raises(InputError, match="lesion-2022"):
        parse_metrics("region,lesion-2022")


def test_lesion_rows_of_a_missed_lesion_carry_the_penalty():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:12, 5:12, 5:12] = 2
    cases, lesions = lesion_rows("c", np.zeros_like(ref), ref, BRATS, (1.0, 1.0, 1.0), ("region", "lesion-2023"))
    wt = next(r for r in cases if r["region"] == "WT")
    assert (wt["dice"], wt["hd95"], wt["tp"], wt["fn"], wt["rq"]) == (0.0, 374.0, 0, 1, 0.0)
    assert [(l["region"], l["matched"], l["hd95"], l["counted"]) for l in lesions] == [("WT", "", 374.0, 1)]
