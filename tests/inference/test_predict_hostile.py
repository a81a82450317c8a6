"""``glioseg predict`` on hostile command lines and files: one-line messages naming file and check."""
from __future__ import annotations

import errno
import os

import nibabel as nib
import pytest
import torch

from glioseg.cli import main
from glioseg import files
from glioseg.inference import pipeline, writer
from glioseg.training.checkpoint import save_checkpoint
from ._fakes import LPS, tiny_bundle, write_case


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", {"bundle": tiny_bundle(0).to_state()})


def _named(folder, **override):
    files = {c: folder / f"{folder.name}_{c}.nii.gz" for c in ("flair", "t1", "t1ce", "t2")}
    files.update(override)
    return [arg for c, path in files.items() for arg in (f"--{c}", str(path))]


def test_two_channel_flags_naming_one_file_are_an_error_unless_allowed(tmp_path, checkpoint, caplog):
    folder, _ = write_case(tmp_path / "data", LPS)
    t1ce = folder / f"{folder.name}_t1ce.nii.gz"
    argv = ["predict", *_named(folder, t2=t1ce), "--case-id", "p1", "--checkpoint", str(checkpoint),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert f"--t1ce and --t2 name the same file {t1ce}; give each modality its own image" in caplog.text
    assert not (tmp_path / "out" / "p1.nii.gz").exists()
    caplog.clear()
    assert main([*argv, "--allow-duplicate-channels"]) == 0
    assert f"--t1ce and --t2 name the same file {t1ce} (allowed by --allow-duplicate-channels)" in caplog.text
    assert (tmp_path / "out" / "p1.nii.gz").is_file()


def test_a_checkpoint_folder_is_named_as_a_folder(tmp_path, checkpoint, caplog):
    folder, _ = write_case(tmp_path / "data", LPS)
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint.parent), "--out", str(tmp_path / "o")]) == 2
    assert (f"--checkpoint {checkpoint.parent} is a folder, not a model file: give a file such as "
            f"{checkpoint.parent}/best.pt; model files in it: best.pt") in caplog.text


def test_an_unusable_device_is_refused_before_loading(tmp_path, checkpoint, caplog):
    folder, _ = write_case(tmp_path / "data", LPS)
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cuda:7"]) == 2
    expected = "use --device cpu" if not torch.cuda.is_available() else "CUDA device(s), cuda:0.."
    assert "--device cuda:7: torch" in caplog.text and expected in caplog.text
    assert main([*argv, "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a device" in caplog.text and "Traceback" not in caplog.text


def test_probabilities_that_do_not_fit_leave_no_output_of_the_case(tmp_path, checkpoint, caplog, monkeypatch):
    folder, _ = write_case(tmp_path / "data", LPS)
    out = tmp_path / "out"
    real = writer.write_verified

    def disk_full_for_probabilities(path, array, reference):
        if path.parent.name == "probabilities":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, array, reference)

    monkeypatch.setattr(writer, "write_verified", disk_full_for_probabilities)
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--probabilities"]
    assert main(argv) == 2
    final = out / "probabilities" / f"{folder.name}.nii.gz"
    assert f"{final}: cannot write probabilities" in caplog.text and "No space left on device" in caplog.text
    outputs = lambda: {p.name for p in out.rglob("*") if p.is_file() and p.name != pipeline.LOCK_FILE}  # noqa: E731
    assert outputs() == set()                              # no label map without its sidecar
    monkeypatch.setattr(writer, "write_verified", real)
    assert main(argv) == 0
    assert outputs() == {f"{folder.name}.nii.gz", f"{folder.name}.seg.nrrd", f"{folder.name}.json",
                         "brats-labels.ctbl", "brats-labels.itksnap.txt"}


def test_an_invalid_qform_reaches_the_user_with_file_and_check(tmp_path, checkpoint, caplog):
    folder, _ = write_case(tmp_path / "data", LPS)
    t1 = folder / f"{folder.name}_t1.nii.gz"
    img = nib.load(str(t1))
    img.header["quatern_b"], img.header["quatern_c"] = 0.9, 0.9
    nib.save(nib.Nifti1Image(img.get_fdata().astype("int16"), None, header=img.header), str(t1))
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert f"{t1}: qform is invalid: w2 should be positive" in caplog.text
    assert "expected a unit quaternion" in caplog.text


def test_a_second_prediction_into_a_busy_folder_fails_and_leaves_the_first_ones_parts(tmp_path, checkpoint,
                                                                                    caplog):
    """#23: a second predict into the same --out removed the running one's .part- file at start-up."""
    folder, _ = write_case(tmp_path / "data", LPS)
    out = tmp_path / "out"
    out.mkdir()
    part = out / f".part-99999-{folder.name}.nii.gz"          # the first run's case in progress
    part.write_bytes(b"being written")
    with files.exclusive_lock(out / pipeline.LOCK_FILE, "the first run"):
        assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert f"prediction folder {out} is in use by another process (pid {os.getpid()})" in caplog.text
    assert part.read_bytes() == b"being written" and not (out / f"{folder.name}.nii.gz").exists()
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert not part.exists() and (out / f"{folder.name}.nii.gz").is_file()   # once free: a stale part


def test_predictions_into_the_input_dataset_are_refused_up_front(tmp_path, checkpoint, caplog):
    """#23: predict DATA --out DATA/predictions worked once; then verify, evaluate and the same
    predict refused DATA because of the folder it wrote."""
    data = tmp_path / "data"
    write_case(data, LPS)
    for out in (data / "predictions", data):
        caplog.clear()
        assert main(["predict", str(data), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
        assert f"--out {out} is inside the input folder {data}" in caplog.text
    assert not (data / "predictions").exists()
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--ref", str(data), "--out", str(data / "eval")]) == 2
    assert main(["preprocess", str(data), "--out", str(data / "cache")]) == 2
    assert sorted(p.name for p in data.iterdir()) == ["Brats18_TEST_001_1"]
    assert main(["verify", str(data)]) == 0
