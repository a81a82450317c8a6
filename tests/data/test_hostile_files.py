"""Hostile files: every message names the file and the check, and fails that case only."""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.budget import MAX_IMAGE_MB_ENV
from glioseg.data.errors import DataError
from glioseg.data.formats import CHANNELS
from glioseg.data.io import read_image
from glioseg.inference import inputs

REPO = Path(__file__).resolve().parents[2]


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


def _claims_1200_cubed(path, nifti):
    """A 1.8 MB .nii.gz whose header claims 1200³ uint8 voxels (1.7 GB decoded)."""
    small = nifti(path.with_name("small.nii"), np.zeros((4, 4, 4), np.uint8))
    header = nib.load(str(small)).header
    small.unlink()
    header.set_data_shape((1200, 1200, 1200))
    header["vox_offset"] = 352
    payload = np.random.default_rng(0).bytes(1_800_000)  # incompressible: the file is big enough
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + payload, compresslevel=1))
    return path


def test_a_huge_voxel_count_is_refused_by_the_budget_before_allocating(brats_root, nifti, capsys, monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_MB_ENV, raising=False)  # and restored after: --max-image-mb sets it
    monkeypatch.setenv(MAX_IMAGE_MB_ENV, "")
    case = _cases(brats_root)[0]
    flair = _claims_1200_cubed(case / f"{case.name}_flair.nii.gz", nifti)
    assert main(["verify", str(brats_root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert (f"{flair}: header claims 1728000000 bytes of voxel data (1200, 1200, 1200) uint8 (1647.9 MiB), over "
            "the budget of 1073741824 bytes (1024.0 MiB per image; if the file is real, raise it with glioseg "
            "--max-image-mb or $GLIOSEG_MAX_IMAGE_MB)") in out and "1 valid, 1 invalid" in out
    # The option reaches the worker processes: a budget below one small volume refuses every case.
    assert main(["--max-image-mb", "0.001", "verify", str(brats_root), "--workers", "2"]) == 1
    assert "0 valid, 2 invalid" in capsys.readouterr().out
    assert main(["--max-image-mb", "-1", "verify", str(brats_root)]) == 2


def test_out_of_memory_while_reading_is_a_message_not_a_traceback(brats_root, nifti, tmp_path):
    case = _cases(brats_root)[0]
    flair = _claims_1200_cubed(case / f"{case.name}_flair.nii.gz", nifti)
    # A process limited to 1 GiB more address space than it has, with the budget raised past the file.
    script = textwrap.dedent(f"""
        import resource, sys
        from glioseg.cli import main
        import glioseg.data.verify
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))
        sys.exit(main(["--max-image-mb", "4096", "verify", {str(brats_root)!r}, "--workers", "1"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"{flair}: out of memory allocating 1728000000 bytes for the voxels (1200, 1200, 1200) uint8" in done.stdout
    assert "Traceback" not in done.stderr
