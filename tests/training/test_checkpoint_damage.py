"""Damaged checkpoints with a matching .sha256, and checkpoints that would not fit on the disk."""
from __future__ import annotations

import errno
import logging
import struct
import zipfile
from collections import namedtuple

import pytest
import torch

from glioseg.cli import main
from glioseg.training import checkpoint as ck
from glioseg.checkpoint_io import CheckpointError, load_checkpoint, sidecar_path
from glioseg.files import file_sha256
from glioseg.training.checkpoint import save_checkpoint

from ._runs import run_inprocess, train_args, write_config

Usage = namedtuple("Usage", "total used free")


def _state(width: int = 64) -> dict:
    model = torch.nn.Linear(width, width)
    return {"model": model.state_dict(), "epoch": 1}


def _resign(path) -> None:
    """Recompute the sidecar, as someone who changed the file would."""
    sidecar_path(path).write_text(f"{file_sha256(path)}  {path.name}\n")


def _flip_a_weight_byte(path) -> None:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x40
    path.write_bytes(bytes(raw))


def test_changed_weights_with_a_recomputed_sha256_fail_the_crc_check(tmp_path, caplog):
    save_checkpoint(tmp_path / "best.pt", _state())
    path = save_checkpoint(tmp_path / "best.pt", _state())  # the second save keeps best.pt.prev
    _flip_a_weight_byte(path)
    _resign(path)
    with pytest.raises(CheckpointError, match=rf"{path}: damaged zip archive: member .*/data/\d+ fails its "
                                              r"CRC-32 check .*restore it from a good copy, or use best.pt.prev"):
        load_checkpoint(path)
    out = tmp_path.with_name(f"{tmp_path.name}-o")     # an --out inside the input folder is refused first
    assert main(["predict", str(tmp_path), "--checkpoint", str(path), "--out", str(out)]) == 2
    assert f"{path}: damaged zip archive: member" in caplog.text


def test_a_truncated_checkpoint_with_a_matching_sha256_is_called_damaged(tmp_path, caplog):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _resign(path)
    with pytest.raises(CheckpointError, match=rf"{path}: damaged zip archive, truncated or overwritten .*"
                                              r"bytes\); restore it from a good copy$"):
        load_checkpoint(path)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["predict", str(data), "--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
    assert f"{path}: damaged zip archive, truncated" in caplog.text and "not a glioseg model file" not in caplog.text


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, caplog):
    good = save_checkpoint(tmp_path / "last.pt", _state(1024))  # 4 MiB of weights
    before = good.read_bytes()
    size = len(before)

    def half_a_checkpoint_free(folder):
        assert folder == tmp_path
        return Usage(10**12, 10**12 - size // 2, size // 2)

    with pytest.raises(OSError, match=rf"disk full at {tmp_path}: checkpoint last.pt needs "
                                      rf"{(size + ck._MARGIN) / 2**20:.1f} MiB free, {size / 2**21:.1f} MiB are "
                                      rf"\(a run keeps about 5 checkpoints of {size / 2**20:.1f} MiB") as info:
        save_checkpoint(good, _state(1024), disk_usage=half_a_checkpoint_free)
    assert info.value.errno == errno.ENOSPC
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    with caplog.at_level(logging.WARNING):  # room for this save, not for a run's five checkpoints
        save_checkpoint(good, _state(1024), disk_usage=lambda folder: Usage(10**12, 0, 3 * size))
    assert f"need about {5 * size / 2**20:.1f} MiB (5 x {size / 2**20:.1f} MiB)" in caplog.text


@pytest.mark.usefixtures("one_thread")
def test_train_start_up_removes_the_part_file_of_a_run_killed_before_its_first_checkpoint(
        phantom_cache, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".part-last.pt.k1ll3d"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    config = write_config(tmp_path, epochs=1, steps_per_epoch=1, val_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        assert run_inprocess(train_args(phantom_cache, run, config)) == 0
    assert not stale.exists() and "removed 1 unfinished .part- file(s)" in caplog.text
    assert not [p for p in run.iterdir() if p.name.startswith(".part-")]


@pytest.mark.usefixtures("one_thread")
def test_train_checks_the_device_first(phantom_cache, tmp_path, caplog):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=1)
    assert run_inprocess(train_args(phantom_cache, tmp_path / "run", config, "--device", "cuda:7")) == 2
    assert "--device cuda:7: torch" in caplog.text and not (tmp_path / "run").exists()
