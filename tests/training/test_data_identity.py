"""``train --resume`` on other data is refused, naming what differs, unless ``--allow-other-data`` (#23)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from glioseg.checkpoint_io import load_checkpoint
from glioseg.data.cache import load_cache
from glioseg.data.formats import discover
from glioseg.data.phantom import write_dataset
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset
from glioseg.files import file_sha256
from glioseg.training import data_identity
from glioseg.training.data_identity import differences, identity
from glioseg.run_io import RunFiles

from ._runs import run_inprocess, train_args, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (48, 48, 40)


def test_differences_name_cases_files_convention_and_preprocessing():
    before = identity("brats", {"spacing": None}, {"a": {"flair": "1" * 64, "label": "2" * 64}, "b": {"flair": "3" * 64}})
    assert differences(before, before) == []
    after = identity("brats2023", {"spacing": [1, 1, 1]},
                     {"a": {"flair": "9" * 64}, "c": {"flair": "4" * 64}})
    assert differences(before, after) == [
        "1 case(s) added: c", "1 case(s) removed: b", f"a flair file: SHA-256 {'1' * 12} then, {'9' * 12} now",
        "a label file removed", "label convention 'brats' then, 'brats2023' now",
        "preprocessing {'spacing': None} then, {'spacing': [1, 1, 1]} now"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """A: three phantoms; B: A's case ids, one case's FLAIR from another seed; C: A plus a case."""
    root = tmp_path_factory.mktemp("identity")
    write_dataset(root / "A", cases=3, seed=0, shape=SHAPE)
    write_dataset(root / "other", cases=4, seed=1, shape=SHAPE)
    shutil.copytree(root / "A", root / "B")
    changed = sorted(p for p in (root / "B").iterdir() if p.is_dir())[0]
    flair = next(changed.glob("*_flair.nii.gz"))
    shutil.copy(root / "other" / changed.name / flair.name, flair)
    shutil.copytree(root / "A", root / "C")
    extra = next(p for p in sorted((root / "other").iterdir()) if p.is_dir() and not (root / "A" / p.name).exists())
    shutil.copytree(extra, root / "C" / extra.name)
    return {"A": root / "A", "B": root / "B", "C": root / "C", "changed": changed.name, "extra": extra.name}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(caplog, argv) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_inprocess(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    return errors[0].getMessage()


def test_resume_on_other_raw_data_is_refused_before_the_cache_is_touched(datasets, tmp_path, caplog):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=1, val_fraction=0.0)
    run = tmp_path / "run"
    assert run_inprocess(train_args(datasets["A"], run, config)) == 0
    recorded = json.loads(RunFiles(run).data.read_text())
    assert len(recorded["cases"]) == 3 and recorded["scheme"] == "brats"
    # the bundle records the spacing the network was trained at (predict resamples other spacings)
    cache = load_cache(run / "cache")
    train_ids = RunFiles(run).read_split()["train"]
    expected = np.median([cache.meta(c)["spacing"] for c in train_ids], axis=0).tolist()
    assert load_checkpoint(run / "last.pt")["bundle"]["trained_spacing"] == pytest.approx(expected)
    before = _hashes(run)

    message = _error(caplog, train_args(datasets["B"], run, config, "--resume", "--epochs", "2"))
    assert f"{run}: --resume on other data than the run started on (data.json): {datasets['changed']} " \
           "flair file: SHA-256" in message and "--allow-other-data" in message
    assert _hashes(run) == before                    # not one cache array rewritten, nothing trained
    message = _error(caplog, train_args(datasets["C"], run, config, "--resume", "--epochs", "2"))
    assert f"1 case(s) added: {datasets['extra']}" in message
    assert _hashes(run) == before

    assert run_inprocess(train_args(datasets["A"], run, config, "--resume", "--epochs", "2")) == 0   # its own data
    caplog.clear()
    assert run_inprocess(train_args(datasets["B"], run, config, "--resume", "--epochs", "3",
                                    "--allow-other-data")) == 0
    assert "resuming on other data than the run started on (--allow-other-data)" in caplog.text
    now = json.loads(RunFiles(run).data.read_text())
    assert now != recorded and differences(now, data_identity.from_cache(load_cache(run / "cache"))) == []


def test_a_run_on_a_cache_refuses_another_cache_but_not_the_same_data_raw(datasets, tmp_path, caplog):
    caches = {k: preprocess_dataset(discover(datasets[k]), tmp_path / f"cache{k}", PreprocessConfig(), workers=1)
              for k in ("A", "B")}
    config = write_config(tmp_path, epochs=1, steps_per_epoch=1, val_fraction=0.0)
    run = tmp_path / "run"
    assert run_inprocess(train_args(caches["A"], run, config)) == 0
    message = _error(caplog, train_args(caches["B"], run, config, "--resume", "--epochs", "2"))
    assert f"{datasets['changed']} flair file: SHA-256" in message
    # the raw files the cache was made from are the same data
    assert run_inprocess(train_args(datasets["A"], run, config, "--resume", "--epochs", "2",
                                    "--cache", str(tmp_path / "runcache"))) == 0
