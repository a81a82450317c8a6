"""Checkpoints: atomic, SHA-256 verified, weights-only, disk-full safe, previous one kept."""
from __future__ import annotations

import collections
import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from glioseg.checkpoint_io import CheckpointError, load_checkpoint, previous_path, sidecar_path
from glioseg.files import file_sha256
from glioseg.training import checkpoint as ck
from glioseg.training.checkpoint import save_checkpoint, validate_state


def _state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    return {"model": model.state_dict(), "epoch": 3, "lr": 1e-4, "name": "segresnet",
            "shape": (1, 2), "history": [0.5, float("nan")], "dtype": torch.float16,
            "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}}


def _sign(path: Path) -> None:
    """Give a hand-made file a correct sidecar: an attacker can compute a SHA-256 too."""
    sidecar_path(path).write_text(f"{file_sha256(path)}  {path.name}\n")


def test_round_trip_and_plain_weights_only_load(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(2.0))
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["weight"], torch.full((2, 3), 2.0))
    assert loaded["shape"] == (1, 2) and loaded["dtype"] is torch.float16
    assert np.isnan(loaded["history"][1])
    # the file alone is a standard torch archive
    direct = torch.load(path, weights_only=True)
    assert direct["epoch"] == 3
    digest, name = sidecar_path(path).read_text().split()
    assert name == "last.pt" and digest == file_sha256(path)


def test_previous_checkpoint_is_kept_and_valid(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    save_checkpoint(path, _state(2.0))
    prev = load_checkpoint(previous_path(path))
    assert torch.equal(prev["model"]["weight"], torch.full((2, 3), 1.0))
    assert sidecar_path(previous_path(path)).read_text().split()[1] == "last.pt.prev"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.pt", "last.pt.prev", "last.pt.prev.sha256", "last.pt.sha256"]


def test_flipped_byte_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt: SHA-256 mismatch"):
        load_checkpoint(path)


def test_missing_file_and_missing_sidecar(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = save_checkpoint(tmp_path / "last.pt", _state())
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"last\.pt: no SHA-256 file last\.pt\.sha256"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_in_a_torch_archive_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    _sign(path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused by torch\.load\(weights_only"):
        load_checkpoint(path)


def test_plain_and_legacy_pickles_are_refused(tmp_path):
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": _Evil()}))
    _sign(raw)
    with pytest.raises(CheckpointError, match=r"raw\.pt: a legacy \(non-zip\) pickle"):
        load_checkpoint(raw)
    legacy = tmp_path / "legacy.pt"
    torch.save(_state(), legacy, _use_new_zipfile_serialization=False)
    _sign(legacy)
    with pytest.raises(CheckpointError, match=r"legacy\.pt: a legacy \(non-zip\) pickle"):
        load_checkpoint(legacy)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    _sign(path)
    with pytest.raises(CheckpointError, match=r"scripted\.pt: a TorchScript archive"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": [1, np.zeros(2)]}}, r"state\['a'\]\['b'\]\[1\]: a numpy\.ndarray"),
    ({"p": Path("x")}, r"state\['p'\]: a pathlib\.\w*Path"),
    ({"n": collections.namedtuple("P", "x")(1)}, r"state\['n'\]: a .*P cannot be stored"),
    ({"f": np.float32(1.0)}, r"state\['f'\]: a numpy\.float32"),
])
def test_validate_state_names_the_offending_key(bad, where):
    with pytest.raises(ValueError, match=where):
        validate_state(bad)


def test_invalid_state_is_refused_before_anything_is_written(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"state\['extra'\]"):
        save_checkpoint(path, {**_state(2.0), "extra": np.ones(1)})
    assert path.read_bytes() == before and not previous_path(path).exists()


def test_disk_full_keeps_previous_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state(1.0))
    before = sorted(tmp_path.iterdir())

    def full(target: Path, data: bytes) -> None:
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write_bytes", full)
    with pytest.raises(OSError, match=f"disk full at {tmp_path}") as info:
        save_checkpoint(path, _state(2.0))
    assert info.value.errno == errno.ENOSPC
    assert sorted(tmp_path.iterdir()) == before
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 1.0))


def test_crash_between_renames_falls_back_to_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1.0))
    real_replace = os.replace

    def killed_after_data(src, dst):
        real_replace(src, dst)
        if Path(dst) == path:  # the new data is in place, its sidecar not yet
            raise KeyboardInterrupt

    monkeypatch.setattr(ck.os, "replace", killed_after_data)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.setattr(ck.os, "replace", real_replace)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(path)
    resumed = load_checkpoint(path, allow_previous=True)
    assert torch.equal(resumed["model"]["weight"], torch.full((2, 3), 1.0))
    assert not list(tmp_path.glob(".part-*"))
    # the next save must not rotate the broken file over the good previous one
    save_checkpoint(path, _state(3.0))
    assert torch.equal(load_checkpoint(previous_path(path))["model"]["weight"],
                       torch.full((2, 3), 1.0))


def test_stale_part_files_from_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".part-last.pt.abc123"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "last.pt", _state())
    assert not stale.exists()

