"""Dataset layouts: detection, --format forcing, named channels, sites, paths kept inside the root."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest

from glioseg.data.formats import CHANNELS, DataError, detect_format, discover, inside_root, site_from_case_id


def test_brats_2017_2021_layout(brats_root, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = discover(brats_root)
    assert dataset.format == "brats" and dataset.scheme.name == "brats" and dataset.channels == CHANNELS
    case = dataset.cases[0]
    assert case.case_id == "Brats18_TCIA01_100_1" and case.site == "TCIA01" and case.volume_index is None
    assert {c: p.name for c, p in case.images.items()} == {c: f"{case.case_id}_{c}.nii.gz" for c in CHANNELS}
    assert case.label.name == f"{case.case_id}_seg.nii.gz"
    assert sorted(p.name for p in dataset.ignored) == [f"._{c.case_id}_seg.nii.gz" for c in dataset.cases]
    warnings = [r.getMessage() for r in caplog.records if "dotfiles" in r.getMessage()]
    assert len(warnings) == 1 and "ignored 2 hidden entries" in warnings[0]


def test_brats_2023_layout_maps_names_to_channels(make_dataset):
    dataset = discover(make_dataset("brats2023"))
    assert dataset.format == "brats2023" and dataset.scheme.name == "brats2023"
    case = dataset.cases[0]
    assert {c: p.name.split("-")[-1] for c, p in case.images.items()} == {
        "flair": "t2f.nii.gz", "t1": "t1n.nii.gz", "t1ce": "t1c.nii.gz", "t2": "t2w.nii.gz"}
    assert case.site is None and case.label.name.endswith("-seg.nii.gz")


def test_msd_layout_names_channels_from_dataset_json(make_dataset, caplog):
    root = make_dataset("msd", order=("T2w", "FLAIR", "t1gd", "T1w"))
    with caplog.at_level(logging.WARNING):
        dataset = discover(root)
    assert dataset.format == "msd" and dataset.scheme.name == "msd"
    case = dataset.cases[0]
    assert case.case_id == "BRATS_001" and case.volume_index == {"t2": 0, "flair": 1, "t1ce": 2, "t1": 3}
    assert set(case.images.values()) == {root / "imagesTr" / "BRATS_001.nii.gz"}
    assert case.label == root / "labelsTr" / "BRATS_001.nii.gz"
    assert len(dataset.ignored) == 2 and any("ignored 2 hidden entries" in r.getMessage() for r in caplog.records)
    assert discover(root / "dataset.json").root == root


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(modality={"0": "FLAIR", "1": "T1w", "2": "DWI", "3": "T2w"}), r"modality 2: 'DWI' is unknown"),
    (lambda m: m.update(modality={"0": "FLAIR", "1": "FLAIR", "2": "t1gd", "3": "T2w"}), r"'FLAIR' is unknown or repeated"),
    (lambda m: m.update(modality={"0": "FLAIR", "1": "T1w", "2": "t1gd"}), r"does not name flair, t1, t1ce, t2"),
    (lambda m: m.update(labels={"0": "bg", "1": "necrotic", "2": "edema", "4": "enhancing"}),
     r"labels .* have values \[0, 1, 2, 4\]; expected the MSD Task01 scheme \[0, 1, 2, 3\]"),
    (lambda m: m["training"].append({"label": "x"}), r"training entry 3 has no 'image'"),
])
def test_msd_dataset_json_errors(make_dataset, edit, message):
    root = make_dataset("msd")
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"dataset.json: .*{message}"):
        discover(root)


def test_msd_unreadable_dataset_json(make_dataset):
    root = make_dataset("msd")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dataset.json: cannot read dataset.json: Expecting property name"):
        discover(root)


@pytest.mark.parametrize("layout", ["csv", "json"])
def test_manifests_with_sites(make_dataset, layout):
    path = make_dataset(layout)
    dataset = discover(path)
    assert dataset.format == "manifest" and dataset.root == path and dataset.scheme.name == "brats"
    assert [(c.case_id, c.site) for c in dataset.cases] == [("case0", "site0"), ("case1", "site1")]
    assert dataset.cases[0].images["t1ce"] == path.parent / "files" / "case0_t1ce.nii.gz"
    assert dataset.cases[0].label.name == "case0_mask.nii.gz"


def test_json_manifest_names_its_scheme_and_aliases(make_dataset):
    path = make_dataset("json")
    data = json.loads(path.read_text())
    data["scheme"] = "brats2023"
    for row in data["cases"]:
        row["T2F"], row["t1c"] = row.pop("flair"), row.pop("t1ce")
    path.write_text(json.dumps(data))
    dataset = discover(path)
    assert dataset.scheme.name == "brats2023"
    assert dataset.cases[1].images["flair"].name == "case1_flair.nii.gz"


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(dwi="x.nii.gz"), r"row 1: unknown column 'dwi'; valid: case, flair, t1, t1ce, t2, label, site"),
    (lambda r: r.pop("t2"), r"row 1 lacks t2"),
    (lambda r: r.update(case="case1"), r"case ids repeated: case1"),
])
def test_manifest_row_errors(make_dataset, edit, message):
    path = make_dataset("json")
    data = json.loads(path.read_text())
    edit(data["cases"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        discover(path)


def test_manifest_unknown_scheme_and_bad_shape(make_dataset):
    path = make_dataset("json")
    path.write_text(json.dumps({"scheme": "kits", "cases": []}))
    with pytest.raises(DataError, match=r"scheme 'kits' is unknown"):
        discover(path)
    path.write_text(json.dumps({"cases": "everything"}))
    with pytest.raises(DataError, match=r"expected a list of case objects"):
        discover(path)


@pytest.mark.parametrize("bad, message", [
    ("../outside.nii.gz", r"resolves to .*/outside.nii.gz, outside the dataset root"),
    ("files/../../outside.nii.gz", r"outside the dataset root"),
    ("/etc/passwd", r"is absolute; expected a path relative to"),
    ("$HOME/x.nii.gz", r"uses a variable or '~'"),
    ("~/x.nii.gz", r"uses a variable or '~'"),
])
def test_manifest_paths_must_stay_inside_the_root(make_dataset, bad, message):
    path = make_dataset("json")
    data = json.loads(path.read_text())
    data["cases"][1]["t1"] = bad
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"manifest.json: path '{re.escape(bad)}' (.* )?{message}"):
        discover(path)


def test_dataset_json_paths_and_symlinks_must_stay_inside_the_root(make_dataset, tmp_path):
    root = make_dataset("msd")
    meta = json.loads((root / "dataset.json").read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(root / "imagesTr" / "BRATS_001.nii.gz", outside / "evil.nii.gz")
    os.symlink(outside / "evil.nii.gz", root / "imagesTr" / "link.nii.gz")
    meta["training"][0]["image"] = "./imagesTr/link.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset.json: path './imagesTr/link.nii.gz' resolves to .*evil.nii.gz, "
                                        r"outside the dataset root"):
        discover(root)
    meta["training"][0]["image"] = "../elsewhere/evil.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"outside the dataset root"):
        discover(root)


def test_symlinks_inside_the_root_are_fine(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.nii.gz").write_bytes(b"x")
    os.symlink(tmp_path / "data" / "a.nii.gz", tmp_path / "link.nii.gz")
    assert inside_root(tmp_path, "link.nii.gz", tmp_path / "m.csv") == tmp_path / "data" / "a.nii.gz"


def test_brats_symlinked_case_file_pointing_outside_is_refused(brats_root, tmp_path):
    case = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    target = tmp_path / "outside_t1.nii.gz"
    shutil.move(case / f"{case.name}_t1.nii.gz", target)
    os.symlink(target, case / f"{case.name}_t1.nii.gz")
    with pytest.raises(DataError, match=r"outside the dataset root"):
        discover(brats_root)


def test_format_forcing(brats_root, make_dataset):
    assert discover(brats_root, "brats").format == "brats"
    with pytest.raises(DataError, match=r"dataset.json: cannot read dataset.json"):
        discover(brats_root, "msd")
    with pytest.raises(DataError, match=r"missing the flair image Brats18_TCIA01_100_1-t2f.nii.gz"):
        discover(brats_root, "brats2023")
    with pytest.raises(ValueError, match=r"the manifest format expects a .csv or .json manifest file"):
        discover(brats_root, "manifest")
    with pytest.raises(ValueError, match=r"the brats format expects a folder"):
        discover(make_dataset("csv"), "brats")
    with pytest.raises(ValueError, match=r"unknown format 'nifti'; known: auto, msd, brats, brats2023, manifest"):
        discover(brats_root, "nifti")


def test_detection_errors(tmp_path):
    with pytest.raises(ValueError, match=r"nothing: no such file or folder"):
        discover(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no known dataset layout \(looked for MSD dataset.json \+ "
                                         r"imagesTr/, BraTS <case>/<case>_flair.nii.gz, .*use --format"):
        detect_format(tmp_path / "empty")
    (tmp_path / "msd").mkdir()
    (tmp_path / "msd" / "dataset.json").write_text(json.dumps({"training": []}))
    (tmp_path / "msd" / "imagesTr").mkdir()
    with pytest.raises(ValueError, match=r"msd: no cases found in msd layout"):
        discover(tmp_path / "msd")


def test_missing_channel_is_an_error_or_recorded(brats_root):
    case = sorted(p for p in brats_root.iterdir() if p.is_dir())[1]
    (case / f"{case.name}_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match=rf"{case.name}: missing the t1ce image {case.name}_t1ce.nii.gz"):
        discover(brats_root)
    lenient = discover(brats_root, strict=False)
    problems = [p.problem for p in lenient.cases[1].problems]
    assert problems == [f"missing the t1ce image {case.name}_t1ce.nii.gz"]
    assert "t1ce" not in lenient.cases[1].images and lenient.cases[0].problems == ()


def test_case_without_label_is_a_test_case(brats_root):
    case = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    (case / f"{case.name}_seg.nii.gz").unlink()
    dataset = discover(brats_root)
    assert dataset.cases[0].label is None and dataset.cases[0].files() == list(dataset.cases[0].images.values())


@pytest.mark.parametrize("case_id, site", [
    ("Brats18_TCIA01_201_1", "TCIA01"), ("Brats18_2013_20_1", "2013"), ("Brats17_CBICA_AAB_1", "CBICA"),
    ("BraTS19_TCIA10_103_1", "TCIA10"), ("BraTS20_Training_001", None), ("BraTS2021_00000", None),
    ("BraTS-GLI-00000-000", None), ("BRATS_001", None),
])
def test_site_from_case_id(case_id, site):
    assert site_from_case_id(case_id) == site


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(training=None), 'field "training" is null; expected a list'),
    (lambda m: m.update(modality=["FLAIR", "T1w", "t1gd", "T2w"]), 'field "modality" is a list; expected an object'),
    (lambda m: m.update(labels=["background", "edema", "non-enhancing", "enhancing"]),
     'field "labels" is a list; expected an object'),
    (lambda m: m.update(modality={"a": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}),
     "modality key 'a' is not a volume index"),
])
def test_dataset_json_fields_of_the_wrong_type_are_one_line_naming_file_and_field(make_dataset, edit, message,
                                                                                   caplog):
    """#23: null or list fields gave a traceback and exit 1."""
    from glioseg.cli import main

    root = make_dataset("msd")
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.ERROR):
        assert main(["verify", str(root)]) == 2
    assert f"{root / 'dataset.json'}: {message}" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("layout", ["csv", "json"])
def test_a_manifest_saved_with_a_byte_order_mark_reads(make_dataset, layout):
    """#23: Excel's "CSV UTF-8" starts with a BOM: "unknown column '\\ufeffcase'"."""
    path = make_dataset(layout)
    plain = discover(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = discover(path)
    assert [c.case_id for c in with_bom.cases] == [c.case_id for c in plain.cases] == ["case0", "case1"]
    assert with_bom.cases[0].images == plain.cases[0].images


def test_case_folders_that_are_link_loops_or_dangling_are_reported(brats_root, capsys):
    """#23: verify and predict skipped such a case folder without a word (is_dir() is False)."""
    from glioseg.cli import main

    (brats_root / "Brats18_LOOP_1").symlink_to(brats_root / "Brats18_LOOP_2")
    (brats_root / "Brats18_LOOP_2").symlink_to(brats_root / "Brats18_LOOP_1")
    with pytest.raises(DataError, match=r"Brats18_LOOP_1: is a symbolic link loop \(to .*Brats18_LOOP_2\)"):
        discover(brats_root)
    found = discover(brats_root, strict=False)
    loops = [c for c in found.cases if c.case_id.startswith("Brats18_LOOP")]
    assert [c.case_id for c in loops] == ["Brats18_LOOP_1", "Brats18_LOOP_2"] and all(c.problems for c in loops)
    assert main(["verify", str(brats_root)]) == 1
    assert "PROBLEM Brats18_LOOP_1: " in capsys.readouterr().out
    (brats_root / "Brats18_LOOP_1").unlink()
    (brats_root / "Brats18_LOOP_2").unlink()
    (brats_root / "Brats18_GONE_1").symlink_to(brats_root / "nowhere")
    with pytest.raises(DataError, match="Brats18_GONE_1: is a dangling symbolic link"):
        discover(brats_root)
