"""One discovery rule for every command: ambiguous case folders and unsafe case ids fail alike."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from glioseg.cli import main
from glioseg.data.errors import DataError
from glioseg.data.formats import discover
from glioseg.inference import inputs
from glioseg.data.formats import CHANNELS
from glioseg.run_io import RunFiles


def _first_case(root):
    return sorted(p for p in root.iterdir() if p.is_dir())[0]


def _second_flair(case, nifti, case_arrays):
    """A different ``<case>_flair.nii`` beside ``<case>_flair.nii.gz``."""
    channels, _ = case_arrays(seed=7)
    nifti(case / f"{case.name}_flair.nii", channels["t2"])
    return f"two files for flair: {case.name}_flair.nii, {case.name}_flair.nii.gz"


def _alias_beside(case, nifti, case_arrays):
    """``<case>_t1Gd.nii.gz`` (an alias of t1ce) beside ``<case>_t1ce.nii.gz``."""
    shutil.copy(case / f"{case.name}_t1ce.nii.gz", case / f"{case.name}_t1Gd.nii.gz")
    return f"two files for t1ce: {case.name}_t1Gd.nii.gz, {case.name}_t1ce.nii.gz"


@pytest.mark.parametrize("make_ambiguous", [_second_flair, _alias_beside])
def test_two_candidates_for_a_channel_fail_every_command(make_ambiguous, brats_root, nifti, case_arrays,
                                                         tmp_path, capsys, caplog):
    case = _first_case(brats_root)
    message = make_ambiguous(case, nifti, case_arrays)
    assert main(["verify", str(brats_root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {case.name}: {case}: {message}" in out and "1 valid, 1 invalid" in out
    # preprocess and train discover strictly: the same message, before any case is read.
    with pytest.raises(DataError, match=message):
        discover(brats_root)
    assert main(["preprocess", str(brats_root), "--out", str(tmp_path / "cache"), "--workers", "1"]) == 2
    assert message in caplog.text and not (tmp_path / "cache").exists()
    caplog.clear()
    assert main(["train", "--data", str(brats_root), "--out", str(tmp_path / "run"), "--model", "segresnet",
                 "--device", "cpu", "--epochs", "1"]) == 2
    assert message in caplog.text and not RunFiles(tmp_path / "run").last.exists()
    # predict on the dataset root and on the case folder alike.
    for source in (brats_root, case):
        with pytest.raises(DataError, match=message):
            inputs.from_path(source, CHANNELS, None)


def test_an_alias_alone_is_named_as_an_alias(brats_root):
    case = _first_case(brats_root)
    (case / f"{case.name}_t1ce.nii.gz").rename(case / f"{case.name}_T1Gd.nii.gz")
    with pytest.raises(DataError, match=rf"missing the t1ce image .*unrecognised NIfTI files "
                                        rf"\['{case.name}_T1Gd.nii.gz'\] \(T1Gd is another name for t1ce\)"):
        discover(brats_root)


@pytest.mark.parametrize("layout", ["csv", "json"])
def test_a_manifest_case_id_that_is_a_path_fails_verify(layout, make_dataset, capsys):
    manifest = make_dataset(layout)
    if layout == "csv":
        with open(manifest, newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows[1]["case"] = "../../evil"
        with open(manifest, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        data = json.loads(manifest.read_text())
        data["cases"][1]["case"] = "../../evil"
        manifest.write_text(json.dumps(data))
    assert main(["verify", str(manifest), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert (f"PROBLEM ../../evil: {manifest}: case id '../../evil' cannot name a file or folder; expected "
            "letters, digits") in out and "1 valid, 1 invalid" in out
    with pytest.raises(DataError, match=rf"{manifest}: case id '../../evil' cannot"):
        discover(manifest)


def test_two_manifest_columns_naming_one_file_fail_verify(make_dataset, capsys):
    manifest = make_dataset("json")
    data = json.loads(manifest.read_text())
    data["cases"][0]["t2"] = data["cases"][0]["t1ce"]
    manifest.write_text(json.dumps(data))
    assert main(["verify", str(manifest), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    shared = manifest.parent / data["cases"][0]["t1ce"]
    assert f"PROBLEM case0: {manifest}: row 1: t1ce and t2 name the same file {shared}; expected one" in out
    with pytest.raises(DataError, match="row 1: t1ce and t2 name the same file"):
        discover(manifest)
