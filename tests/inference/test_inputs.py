"""Inputs: dataset folders, case folders and named files; channels matched by name."""
from __future__ import annotations

from pathlib import Path

import pytest

from glioseg.data.formats import CHANNELS
from glioseg.inference import inputs
from ._fakes import LPS, write_case


def test_dataset_folder_and_case_folder_give_the_same_case(tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    (from_dataset,) = inputs.from_path(tmp_path / "data", CHANNELS, None)
    (from_case,) = inputs.from_path(folder, CHANNELS, None)
    assert from_dataset.case.images == from_case.case.images
    assert from_dataset.scheme.name == from_case.scheme.name == "brats"
    assert from_case.case.label is None and from_case.case.site == "TEST"


def test_channels_follow_the_model_names_not_the_file_order(tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    (item,) = inputs.from_path(folder, ("t2", "flair"), None)
    assert item.dataset.channels == ("t2", "flair")
    assert list(item.case.images) == ["t2", "flair"]


def test_missing_modality_is_a_clear_error(tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    (folder / f"{folder.name}_t1ce.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"lacks the modality t1ce that the model needs.*found flair="):
        inputs.from_path(folder, CHANNELS, None)


def test_unrecognised_file_in_a_case_folder_is_an_error(tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    (folder / f"{folder.name}_t1ce.nii.gz").rename(folder / f"{folder.name}_T1Gd.nii.gz")
    with pytest.raises(ValueError, match=r"unrecognised NIfTI files \['Brats18_TEST_001_1_T1Gd.nii.gz'\]"):
        inputs.from_path(folder, CHANNELS, None)


def test_named_files(tmp_path):
    folder, _ = write_case(tmp_path / "data", LPS)
    files = {c: folder / f"{folder.name}_{c}.nii.gz" for c in CHANNELS}
    item = inputs.from_named_files(files, "patient7", CHANNELS, "brats2023")
    assert item.case.case_id == "patient7" and item.scheme.name == "brats2023"
    with pytest.raises(ValueError, match="lacks the modality t2"):
        inputs.from_named_files({**files, "t2": None}, "patient7", CHANNELS, "brats")
    with pytest.raises(ValueError, match=r"--t1 given, but the model takes only flair, t1ce, t2"):
        inputs.from_named_files(files, "patient7", ("flair", "t1ce", "t2"), "brats")
    with pytest.raises(ValueError, match="--case-id is required"):
        inputs.from_named_files(files, None, CHANNELS, "brats")
    with pytest.raises(ValueError, match="cannot name an output file"):
        inputs.from_named_files(files, "../evil", CHANNELS, "brats")


def test_collect_rejects_mixed_inputs_and_duplicate_ids(tmp_path):
    folder, _ = write_case(tmp_path / "a", LPS)
    write_case(tmp_path / "b", LPS)
    files = {c: folder / f"{folder.name}_{c}.nii.gz" for c in CHANNELS}
    with pytest.raises(ValueError, match="not both"):
        inputs.collect([folder], files, "x", CHANNELS, None, "brats")
    with pytest.raises(ValueError, match="occur more than once"):
        inputs.collect([tmp_path / "a", tmp_path / "b"], {}, None, CHANNELS, None, "brats")
    with pytest.raises(ValueError, match="nothing to predict"):
        inputs.collect([], {}, None, CHANNELS, None, "brats")
    with pytest.raises(ValueError, match="no such file"):
        inputs.collect([Path(tmp_path / "nope")], {}, None, CHANNELS, None, "brats")
