"""Hostile files: every message names the file and the check, and fails that case only."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.errors import DataError
from glioseg.data.formats import CHANNELS
from glioseg.data.io import read_image
from glioseg.inference import inputs


def _cases(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def _dangling(path):
    path.unlink()
    os.symlink("gone.nii.gz", path)
    return "is a dangling symbolic link (to gone.nii.gz); expected a NIfTI file"


def _directory(path):
    path.unlink()
    path.mkdir()
    return "is a directory; expected a NIfTI file"


@pytest.mark.parametrize("replace_file", [_dangling, _directory])
def test_a_non_file_in_place_of_a_modality_is_named(replace_file, make_dataset, capsys):
    root = make_dataset("brats", cases=1)
    (case,) = _cases(root)
    flair = case / f"{case.name}_flair.nii.gz"
    what = replace_file(flair)
    assert main(["verify", str(root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {case.name}: {flair}: {what}" in out and "missing" not in out
    for source in (root, case):
        with pytest.raises(DataError, match=re.escape(f"{flair}: {what}")):
            inputs.from_path(source, CHANNELS, None)


def test_a_label_value_just_above_one_prints_its_digits(make_dataset, nifti, case_arrays, capsys):
    root = make_dataset("brats")
    case = _cases(root)[0]
    _, label = case_arrays()
    values = label.astype(np.float32)
    values[label == 1] = np.float32(1.0000001)
    seg = nifti(case / f"{case.name}_seg.nii.gz", values)
    assert main(["verify", str(root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    count = int((label == 1).sum())
    assert f"{seg}: label values are not whole numbers: 1.0000001 ({count} voxels)" in out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_invalid_qform_quaternion_fails_that_case_only(workers, brats_root, nifti, case_arrays, capsys):
    case = _cases(brats_root)[1]
    channels, _ = case_arrays(seed=1)
    t2 = nifti(case / f"{case.name}_t2.nii.gz", channels["t2"], quatern_b=0.9, quatern_c=0.9)
    assert main(["verify", str(brats_root), "--workers", workers]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM {case.name}: {t2}: qform is invalid: w2 should be positive" in out
    assert "expected a unit quaternion" in out and "1 valid, 1 invalid" in out
    with pytest.raises(DataError, match=rf"{t2}: qform is invalid: .*\(quatern_b, c, d = 0.9, 0.9, 1\)"):
        read_image(t2)
