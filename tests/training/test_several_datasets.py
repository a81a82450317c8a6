"""``train --data A B``: two datasets of different formats trained on as one; their identity on resume."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from glioseg.data.cache import load_cache
from glioseg.data.phantom import write_dataset, write_msd_dataset
from glioseg.run_io import RunFiles
from glioseg.data.preprocess import PreprocessConfig
from glioseg.data.sources import discover_all
from glioseg.training import data_identity
from glioseg.training.data_identity import differences, identity

from ._runs import run_inprocess, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (48, 48, 40)


@pytest.fixture(scope="module")
def two_formats(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two-formats")
    write_dataset(root / "brats", cases=2, seed=0, shape=SHAPE)
    write_msd_dataset(root / "msd", cases=2, seed=1, shape=SHAPE)
    return {"brats": root / "brats", "msd": root / "msd", "root": root}


def _train(data: list[Path], run: Path, config: Path, *extra: str) -> int:
    return run_inprocess(["train", "--data", *map(str, data), "--out", str(run), "--config", str(config), *extra])


def test_two_formats_train_together_and_resume_only_on_the_same_sources(two_formats, tmp_path, caplog):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=2, val_fraction=0.0)
    run = tmp_path / "run"
    data = [two_formats["brats"], two_formats["msd"]]
    assert _train(data, run, config) == 0
    files = RunFiles(run)
    assert len(files.read_steps()) == 2 and files.finished()           # the two steps ran
    cache = load_cache(run / "cache")
    assert cache.scheme.name == "brats" and sorted(files.read_split()["train"]) == sorted(cache.case_ids)
    assert set(np.unique(cache.label("BRATS_001"))) <= {0, 1, 2, 4}
    recorded = json.loads(files.data.read_text())
    assert recorded["scheme"] == "brats"
    assert recorded["sources"] == {
        "BRATS_001": {"dataset": "msd", "labels": "msd"}, "BRATS_002": {"dataset": "msd", "labels": "msd"},
        "Phantom_SITEA_001": {"dataset": "brats", "labels": "brats"},
        "Phantom_SITEB_002": {"dataset": "brats", "labels": "brats"}}

    # the same files under another dataset's name are other data: refused before anything is rewritten
    renamed = two_formats["root"] / "msd-renamed"
    shutil.copytree(two_formats["msd"], renamed)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert _train([two_formats["brats"], renamed], run, config, "--resume", "--epochs", "2") == 2
    assert "BRATS_001 from dataset msd then, msd-renamed now" in caplog.text
    # its own datasets, hashed raw as a resume checks them, are the data recorded from the cache
    raw = data_identity.from_dataset(discover_all(data), PreprocessConfig().to_dict())
    assert raw == recorded and differences(recorded, raw) == []


def test_a_cache_is_not_combined_with_other_data(two_formats, tmp_path, caplog, phantom_cache):
    config = write_config(tmp_path, epochs=1, steps_per_epoch=1, val_fraction=0.0)
    with caplog.at_level(logging.ERROR):
        assert _train([phantom_cache, two_formats["msd"]], tmp_path / "run", config) == 2
    assert f"{phantom_cache} is a glioseg cache: a cache is given alone as --data" in caplog.text


def test_one_dataset_identity_has_no_sources_and_meets_several_by_convention():
    cases = {"a": {"flair": "1" * 64}, "b": {"flair": "2" * 64}}
    one = identity("brats", {}, cases)
    assert set(one) == {"scheme", "preprocess", "cases"}             # data.json of one dataset: as before
    same = identity("brats", {}, cases, {"a": {"dataset": "x", "labels": "brats"},
                                         "b": {"dataset": "y", "labels": "brats"}})
    assert differences(one, same) == []          # the same bytes, read in the same convention
    other = identity("brats", {}, cases, {"a": {"dataset": "x", "labels": "msd"},
                                          "b": {"dataset": "y", "labels": "brats"}})
    assert differences(one, other) == ["a labels read as brats then, msd now"]
    moved = identity("brats", {}, cases, {"a": {"dataset": "y", "labels": "brats"},
                                          "b": {"dataset": "y", "labels": "brats"}})
    assert differences(same, moved) == ["a from dataset x then, y now"]
