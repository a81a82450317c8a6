"""glioseg verify: the table, the JSON report, every problem with file and reason, the exit code."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.formats import discover
from glioseg.data.verify import verify_case

KEYS = {"case", "site", "shape", "spacing", "orientation", "labels", "volumes_ml", "problems", "warnings", "valid"}


def _expected_volumes(label: np.ndarray, regions: dict, voxel_mm3: float = 1.0) -> dict:
    return {r: float(np.isin(label, values).sum()) * voxel_mm3 / 1000 for r, values in regions.items()}


def test_verify_case_reports_geometry_labels_and_volumes(brats_root, case_arrays):
    dataset = discover(brats_root)
    report = verify_case(dataset.cases[1], dataset)
    _, label = case_arrays(seed=1)
    assert report.valid and report.problems == () and report.case == "Brats18_TCIA02_101_1"
    assert (report.site, report.shape, report.spacing, report.orientation) == ("TCIA02", (24, 24, 16), (1.0, 1.0, 1.0), "LPS")
    assert report.labels == (0, 1, 2, 4)
    assert report.label_voxels == {v: int((label == v).sum()) for v in (0, 1, 2, 4)}
    assert report.volumes_ml == pytest.approx(_expected_volumes(label, {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}))


def test_verify_cli_on_a_good_dataset(brats_root, tmp_path, capsys):
    out = tmp_path / "reports" / "verify.json"
    assert main(["verify", str(brats_root), "--json", str(out), "--workers", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "Brats18_TCIA01_100_1  TCIA01  24x24x16" in stdout and "LPS" in stdout
    assert "2 cases (brats, labels brats): 2 valid, 0 invalid; 0 warnings (0 background-only labels); " \
           "2 dotfiles ignored" in stdout
    report = json.loads(out.read_text())
    assert report["valid"] and report["format"] == "brats" and report["scheme"]["name"] == "brats"
    assert all(KEYS <= set(case) for case in report["cases"])
    assert set(report["cases"][0]["volumes_ml"]) == {"WT", "TC", "ET"}
    assert [p.name for p in out.parent.iterdir()] == ["verify.json"]


def test_verify_cli_on_msd(make_dataset, tmp_path, case_arrays):
    out = tmp_path / "msd.json"
    assert main(["verify", str(make_dataset("msd", order=("T1w", "T2w", "FLAIR", "t1gd"))), "--json", str(out),
                 "--workers", "1"]) == 0
    case = json.loads(out.read_text())["cases"][0]
    _, label = case_arrays(seed=0, scheme="msd")
    assert case["labels"] == [0, 1, 2, 3] and case["site"] is None
    assert case["volumes_ml"] == pytest.approx(_expected_volumes(label, {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}))


def _flip_payload_bit(path, rng):
    blob = bytearray(path.read_bytes())
    blob[int(rng.integers(len(blob) // 3, len(blob) - 9))] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(blob))


def _broken_dataset(make_dataset, nifti, case_arrays, affine_lps):
    root = make_dataset("brats", cases=4)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    _flip_payload_bit(folders[0] / f"{folders[0].name}_t1.nii.gz", np.random.default_rng(7))
    img = nib.load(folders[1] / f"{folders[1].name}_flair.nii.gz")
    img.set_sform(affine_lps() @ np.diag([-1.0, 1, 1, 1]), code=1)
    nib.save(img, folders[1] / f"{folders[1].name}_flair.nii.gz")
    channels, label = case_arrays(seed=2)
    fractional = label.astype(np.float32)
    fractional[label == 4] = 3.7
    nifti(folders[2] / f"{folders[2].name}_seg.nii.gz", fractional)
    t2 = channels["t2"].astype(np.float32)
    t2[5, 6, 7] = np.nan
    nifti(folders[2] / f"{folders[2].name}_t2.nii.gz", t2)
    nifti(folders[3] / f"{folders[3].name}_seg.nii.gz", np.zeros_like(label))
    return root, folders


def test_verify_reports_every_problem_with_file_and_reason(make_dataset, nifti, case_arrays, affine_lps, tmp_path,
                                                           capsys):
    root, folders = _broken_dataset(make_dataset, nifti, case_arrays, affine_lps)
    out = tmp_path / "broken.json"
    assert main(["verify", str(root), "--json", str(out), "--workers", "2"]) == 1
    stdout = capsys.readouterr().out
    problems = [line for line in stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 4, stdout
    assert "_t1.nii.gz: corrupt gzip stream" in problems[0] and folders[0].name in problems[0]
    assert "_flair.nii.gz: qform (code 1) and sform (code 1) disagree: qform is LPS" in problems[1]
    assert "_t2.nii.gz: non-finite voxels: 1 of 9216 (NaN 1, +inf 0, -inf 0), first at index (5, 6, 7)" in problems[2]
    assert "_seg.nii.gz: label values are not whole numbers: 3.7" in problems[3]
    assert "4 cases (brats, labels brats): 1 valid, 3 invalid; 1 warnings (1 background-only labels)" in stdout
    report = json.loads(out.read_text())
    assert not report["valid"]
    assert [c["valid"] for c in report["cases"]] == [False, False, False, True]
    assert [len(c["problems"]) for c in report["cases"]] == [1, 1, 2, 0]
    assert report["cases"][3]["volumes_ml"] == {"WT": 0.0, "TC": 0.0, "ET": 0.0}


def test_verify_reports_a_missing_channel_file_as_a_case_problem(brats_root, capsys):
    folder = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    (folder / f"{folder.name}_t2.nii.gz").unlink()
    assert main(["verify", str(brats_root), "--workers", "1"]) == 1
    assert f"PROBLEM {folder.name}: {folder}: missing the t2 image {folder.name}_t2.nii.gz" in capsys.readouterr().out


def test_verify_cli_exits_2_on_an_unknown_layout(tmp_path, caplog):
    assert main(["verify", str(tmp_path)]) == 2
    assert "no known dataset layout" in caplog.text


@pytest.mark.realdata
def test_verify_real_brats18_volumes_match_an_independent_count(shared_data, tmp_path):
    root = shared_data / "brats18"
    out = tmp_path / "brats18.json"
    assert main(["verify", str(root), "--json", str(out), "--workers", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["valid"] and len(report["cases"]) == 20
    for case in report["cases"]:
        seg = nib.load(root / case["case"] / f"{case['case']}_seg.nii.gz")
        label = np.asanyarray(seg.dataobj)
        voxel = float(np.prod(seg.header.get_zooms()[:3]))
        expected = _expected_volumes(label, {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}, voxel)
        assert case["volumes_ml"] == pytest.approx(expected, abs=1e-9), case["case"]
        assert (case["shape"], case["spacing"], case["orientation"]) == ([240, 240, 155], [1.0, 1.0, 1.0], "LPS")
        assert case["labels"] == [0, 1, 2, 4] and case["site"] == case["case"].split("_")[1]
    warned = {c["case"]: c["warnings"] for c in report["cases"]}
    assert any("flair 481" in w for w in warned["Brats18_2013_20_1"])


def test_an_all_zero_modality_is_a_problem_not_ok(brats_root, nifti, capsys):
    """#23: verify said "ok" for a case whose FLAIR is all zeros; predict then refused it."""
    case = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    flair = case / f"{case.name}_flair.nii.gz"
    shape = nib.load(str(flair)).shape
    nifti(flair, np.zeros(shape, dtype=np.int16))
    assert main(["verify", str(brats_root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {case.name}: {flair}: flair image is zero everywhere (an empty image)" in out
    assert "1 valid, 1 invalid" in out
