"""``glioseg predict`` end to end: a real (tiny) network, ensembles, named files, errors, kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.cli import main
from glioseg.data.formats import CHANNELS
from glioseg.files import file_sha256
from glioseg.training.checkpoint import save_checkpoint
from ._fakes import LPS, PERMUTED, REPO, tiny_bundle, write_case


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return (save_checkpoint(folder / "a.pt", {"bundle": tiny_bundle(0).to_state()}),
            save_checkpoint(folder / "b.pt", {"bundle": tiny_bundle(1).to_state()}))


def _check_output(output: Path, source: Path) -> np.ndarray:
    out, ref = nib.load(str(output)), nib.load(str(source))
    assert out.shape == ref.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_sform(), ref.header.get_sform())
    labels = np.asanyarray(out.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    return labels


def test_predict_a_dataset_with_a_checkpoint(tmp_path, checkpoints):
    folder, _ = write_case(tmp_path / "data", PERMUTED)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "data"), "--checkpoint", str(checkpoints[0]), "--out", str(out)]) == 0
    _check_output(out / f"{folder.name}.nii.gz", folder / f"{folder.name}_seg.nii.gz")
    record = json.loads((out / f"{folder.name}.json").read_text())
    assert record["models"][0]["sha256"] == file_sha256(checkpoints[0])
    # The default window is the brain box rounded up to SegResNet's size divisor (8).
    box = [hi - lo for lo, hi in record["cache_box"]]
    assert record["run"]["window"] == [-(-n // 8) * 8 for n in box] and record["run"]["windows_run"] == 1


def test_a_model_that_flips_by_default_and_no_tta(tmp_path):
    # a bundle chosen on flipped probabilities flips unless --no-tta; the record says what ran
    flipping = save_checkpoint(tmp_path / "f.pt", {"bundle": replace(tiny_bundle(0), tta=True).to_state()})
    folder, _ = write_case(tmp_path / "data", PERMUTED)
    runs = {}
    for flag in ([], ["--no-tta"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["predict", str(folder), "--checkpoint", str(flipping), "--out", str(out), *flag]) == 0
        runs[bool(flag)] = json.loads((out / f"{folder.name}.json").read_text())["run"]
    assert (runs[False]["tta"], runs[False]["windows_run"]) == (True, 8)
    assert (runs[True]["tta"], runs[True]["windows_run"]) == (False, 1)


def test_ensemble_in_the_documented_argument_order(tmp_path, checkpoints):
    folder, _ = write_case(tmp_path / "data", LPS)
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoints[0]), str(checkpoints[1]), str(folder), "--out", str(out),
            "--uncertainty"]
    assert main(argv) == 0
    _check_output(out / f"{folder.name}.nii.gz", folder / f"{folder.name}_seg.nii.gz")
    record = json.loads((out / f"{folder.name}.json").read_text())
    assert [m["sha256"] for m in record["models"]] == [file_sha256(p) for p in checkpoints]
    assert record["run"]["windows_run"] == 2
    assert (out / "uncertainty" / f"{folder.name}.nii.gz").is_file()


@pytest.mark.realdata
def test_real_lps_case_lands_on_its_input(tmp_path, shared_data, checkpoints):
    case = shared_data / "brats18" / "Brats18_TCIA03_265_1"
    out = tmp_path / "out"
    assert main(["predict", str(case), "--checkpoint", str(checkpoints[0]), "--out", str(out)]) == 0
    labels = _check_output(out / f"{case.name}.nii.gz", case / f"{case.name}_flair.nii.gz")
    assert labels.shape == (240, 240, 155) and labels.any()
    # A real network on real data (exact placement is proven by the oracle tests): labels come
    # only from inside the brain's box on the file's own grid.
    brain = np.zeros(labels.shape, dtype=bool)
    for channel in CHANNELS:
        brain |= np.asanyarray(nib.load(str(case / f"{case.name}_{channel}.nii.gz")).dataobj) != 0
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))
    outside = labels.copy()
    outside[box] = 0
    assert not outside.any()


def test_named_modality_files(tmp_path, checkpoints):
    folder, _ = write_case(tmp_path / "data", LPS)
    files = [arg for c in CHANNELS for arg in (f"--{c}", str(folder / f"{folder.name}_{c}.nii.gz"))]
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoints[0]), *files, "--case-id", "patient7",
                 "--out", str(out)]) == 0
    _check_output(out / "patient7.nii.gz", folder / f"{folder.name}_seg.nii.gz")


def test_errors_exit_2_with_a_message(tmp_path, checkpoints, caplog):
    folder, _ = write_case(tmp_path / "data", LPS)
    (folder / f"{folder.name}_t2.nii.gz").unlink()
    assert main(["predict", str(folder), "--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "o")]) == 2
    assert "lacks the modality t2" in caplog.text
    script = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(4, 3, 1)), str(script))
    assert main(["predict", str(folder), "--checkpoint", str(script), "--out", str(tmp_path / "o")]) == 2
    assert "TorchScript archive" in caplog.text
    assert not (tmp_path / "o").exists()


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import nibabel
    real_save = nibabel.save

    def slow_save(img, filename):
        real_save(img, filename)          # the bytes are on disk under the .part- name ...
        print("WRITING", filename, flush=True)
        time.sleep(120)                   # ... and the test kills us before the rename

    nibabel.save = slow_save
    from glioseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_during_writing_leaves_no_output_and_the_rerun_completes(tmp_path, checkpoints):
    folder, _ = write_case(tmp_path / "data", LPS)
    out = tmp_path / "out"
    argv = ["predict", str(folder), "--checkpoint", str(checkpoints[0]), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, *argv], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING"), line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    final = out / f"{folder.name}.nii.gz"
    assert not final.exists() and not (out / f"{folder.name}.json").exists()
    assert list(out.glob(".part-*")), "the kill should have hit a half-written .part- file"
    assert main(argv) == 0
    assert not list(out.glob(".part-*"))
    _check_output(final, folder / f"{folder.name}_seg.nii.gz")
    assert main(argv) == 0  # complete now: skipped
    assert json.loads((out / f"{folder.name}.json").read_text())["case"] == folder.name
