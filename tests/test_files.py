"""glioseg.files: atomic writes, a file's SHA-256, stale parts, plain names."""
from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from glioseg.errors import FileError
from glioseg.files import (SAFE_NAME, atomic_path, clean_parts, exclusive_lock, file_sha256, write_json,
                           write_text_atomic)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_text("done")
    assert final.read_text() == "done" and list(tmp_path.iterdir()) == [final]


def test_write_json_and_text_are_atomic_and_exact(tmp_path):
    path = write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [1, 2]}, indent=2, end="\n", sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert write_text_atomic(tmp_path / "t.txt", "é").read_text(encoding="utf-8") == "é"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "t.txt", "x.json"]


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_clean_parts_removes_only_part_files_of_existing_folders(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    for name in (".part-a.1", "sub/.part-b.2", "keep.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".part-folder").mkdir()
    with caplog.at_level(logging.WARNING):
        assert clean_parts(tmp_path, tmp_path / "sub", tmp_path / "missing") == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".part-folder", "keep.json", "sub"]
    assert "removed 2 unfinished .part- file(s)" in caplog.text
    assert clean_parts(tmp_path) == 0


@pytest.mark.parametrize("name, safe", [("Brats18_TCIA01_1", True), ("case.v2-b", True), ("..", False),
                                        ("a/b", False), (".hidden", False), ("", False)])
def test_safe_names_are_plain_file_names(name, safe):
    assert bool(SAFE_NAME.match(name)) == safe


def test_exclusive_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    lock = tmp_path / "new" / ".lock"
    with exclusive_lock(lock, "the folder"):
        with pytest.raises(FileError, match=rf"the folder is in use by another process \(pid {os.getpid()}\)"):
            with exclusive_lock(lock, "the folder"):
                pass
    with exclusive_lock(lock, "the folder"):   # released: the next holder gets it
        pass


def test_exclusive_lock_is_released_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with exclusive_lock(tmp_path / ".lock", "x"):
            raise RuntimeError("boom")
    with exclusive_lock(tmp_path / ".lock", "x"):
        pass
