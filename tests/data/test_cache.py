"""The cache on disk: layout, reader, fingerprint, resumability, atomicity and the CLI."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg import cli
from glioseg.data import cache as cache_mod
from glioseg.data.formats import discover
from glioseg.data.errors import DataError
from glioseg.data.labels import get_scheme, region_volumes_ml
from glioseg.data.preprocess import PreprocessConfig, load_cache, preprocess_dataset, to_original
from tests._cases import write_case_files

SHAPE = (24, 28, 20)
LPS = np.array([[-1.0, 0, 0, 23], [0, -1.0, 0, 27], [0, 0, 1.0, 0], [0, 0, 0, 1]])
CASES = ("Brats18_2013_1_1", "Brats18_CBICA_AAA_1", "Brats18_CBICA_AAB_1")


def write_case(root: Path, case_id: str, seed: int, label_dtype=np.uint8) -> None:
    """A small BraTS-layout case: a noisy box 'brain' in four int16 channels, labels 0/1/2/4."""
    rng = np.random.default_rng(seed)
    lo = rng.integers(2, 6, size=3)
    brain = tuple(slice(a, n - 3) for a, n in zip(lo, SHAPE))
    images = np.zeros((4, *SHAPE), dtype=np.int16)
    for c, image in enumerate(images):
        image[brain] = rng.normal(400 + 100 * c, 50, image[brain].shape).clip(1)
    label = np.zeros(SHAPE, dtype=label_dtype)
    centre = lo + 6
    label[tuple(slice(c - 3, c + 3) for c in centre)] = 2
    label[tuple(slice(c - 2, c + 2) for c in centre)] = 1
    label[tuple(slice(c - 1, c + 1) for c in centre)] = 4
    write_case_files(root, case_id, images, label, LPS)


@pytest.fixture
def data(tmp_path) -> Path:
    for n, case_id in enumerate(CASES):
        write_case(tmp_path / "data", case_id, seed=n, label_dtype=np.int16 if n == 0 else np.uint8)
    return tmp_path / "data"


def build(data: Path, out: Path, config=PreprocessConfig(), workers=1) -> Path:
    return preprocess_dataset(discover(data), out, config, workers=workers)


def mtimes(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_cache_layout_reader_and_index(data, tmp_path):
    out = build(data, tmp_path / "cache")
    cache = load_cache(out)
    assert cache.case_ids == CASES and len(cache) == 3
    assert cache.channels == ("flair", "t1", "t1ce", "t2") and cache.scheme == get_scheme("brats")
    assert cache.site("Brats18_CBICA_AAB_1") == "CBICA" and cache.format == "brats"
    for case_id in CASES:
        image, label, meta = cache.image(case_id), cache.label(case_id), cache.meta(case_id)
        assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == (4, *meta["shape"]) and label.shape == tuple(meta["shape"])
        original = np.asanyarray(nib.load(data / case_id / f"{case_id}_seg.nii.gz").dataobj)
        assert np.array_equal(to_original(np.asarray(label), meta), original)
    index = json.loads((out / "cache.json").read_text())
    assert set(index) >= {"format", "scheme", "channels", "cases", "sites", "config", "glioseg_version"}
    assert index["config"] == PreprocessConfig().to_dict()
    assert not list(out.rglob(".part-*"))
    assert pickle.loads(pickle.dumps(cache)).case_ids == CASES  # DataLoader workers may be spawned
    with pytest.raises(KeyError, match="not a case of the cache"):
        cache.image("nope")


def test_fingerprint_matches_independent_counts(data, tmp_path):
    fp = load_cache(build(data, tmp_path / "cache")).fingerprint()
    assert fp["cases"] == 3 and fp["sites"] == {"2013": 1, "CBICA": 2}
    assert fp["spacing"][CASES[0]] == [1.0, 1.0, 1.0] and fp["shape"][CASES[1]] == list(SHAPE)
    scheme = get_scheme("brats")
    for case_id in CASES:
        label = np.asanyarray(nib.load(data / case_id / f"{case_id}_seg.nii.gz").dataobj)
        assert fp["volumes_ml"][case_id] == pytest.approx(region_volumes_ml(label, scheme, (1, 1, 1)))
    flair = np.concatenate([np.asanyarray(nib.load(data / c / f"{c}_flair.nii.gz").dataobj).ravel()
                            for c in CASES]).astype(np.float64)
    brain = flair[flair != 0]  # every channel shares the brain box here
    assert fp["intensity"]["flair"]["mean"] == pytest.approx(brain.mean(), rel=1e-9)
    assert fp["intensity"]["flair"]["std"] == pytest.approx(brain.std(), rel=1e-9)
    assert fp["intensity"]["flair"]["max"] == brain.max()


def test_second_run_skips_everything(data, tmp_path, caplog):
    out = build(data, tmp_path / "cache")
    before = mtimes(out)
    with caplog.at_level(logging.INFO, logger="glioseg"):
        build(data, out)
    assert "0 preprocessed, 3 up to date (skipped), 0 failed" in caplog.text
    after = mtimes(out)
    assert {k: v for k, v in after.items() if "/" in k} == {k: v for k, v in before.items() if "/" in k}


def test_a_moved_dataset_with_the_same_bytes_stays_current(data, tmp_path, caplog):
    out = build(data, tmp_path / "cache")
    moved = data.rename(tmp_path / "moved")
    with caplog.at_level(logging.INFO, logger="glioseg"):
        build(moved, out)
    assert "0 preprocessed, 3 up to date (skipped)" in caplog.text


def test_half_written_case_and_stale_parts_are_redone(data, tmp_path, caplog):
    out = build(data, tmp_path / "cache")
    before = mtimes(out)
    victim = out / CASES[1]
    (victim / "meta.json").unlink()                  # as if killed after image.npy, before meta.json
    (victim / "image.npy").write_bytes(b"garbage")
    (victim / ".part-label.npy.abc123").write_bytes(b"stale")
    (out / CASES[2] / "meta.json").write_text("[]")  # valid JSON, but not a meta this version wrote
    with caplog.at_level(logging.INFO, logger="glioseg"):
        build(data, out)
    assert "2 preprocessed, 1 up to date (skipped)" in caplog.text
    after = mtimes(out)
    assert after[f"{CASES[0]}/meta.json"] == before[f"{CASES[0]}/meta.json"]
    assert after[f"{CASES[1]}/meta.json"] > before[f"{CASES[1]}/meta.json"]
    assert load_cache(out).image(CASES[1]).shape[0] == 4
    assert not list(out.rglob(".part-*"))


def test_changed_input_or_config_redoes_the_case(data, tmp_path, caplog):
    out = build(data, tmp_path / "cache")
    write_case(data, CASES[2], seed=99)  # same names, new content
    with caplog.at_level(logging.INFO, logger="glioseg"):
        build(data, out)
        assert "1 preprocessed, 2 up to date" in caplog.text
        build(data, out, PreprocessConfig(crop_margin=1))
        assert "3 preprocessed, 0 up to date" in caplog.text
    assert load_cache(out).meta(CASES[0])["config"]["crop_margin"] == 1


def test_a_crash_while_writing_leaves_no_partial_case(data, tmp_path, monkeypatch):
    out = build(data, tmp_path / "cache")
    real_save = np.save

    def dies_on_labels(fh, array):
        if array.dtype == np.uint8:
            raise OSError("disk full (simulated)")
        real_save(fh, array)

    monkeypatch.setattr(np, "save", dies_on_labels)
    with pytest.raises(ValueError, match=r"(?s)3 of 3 cases failed .*disk full \(simulated\)"):
        build(data, out, PreprocessConfig(crop_margin=1))
    assert not (out / "cache.json").exists() and not list(out.rglob(".part-*"))
    assert not list(out.rglob("meta.json"))  # no case claims to be complete
    with pytest.raises(DataError, match="cache.json: missing: the cache is incomplete"):
        load_cache(out)


def test_a_bad_case_fails_clearly_and_the_rest_is_kept(data, tmp_path):
    bad = data / CASES[1] / f"{CASES[1]}_seg.nii.gz"
    label = np.asanyarray(nib.load(bad).dataobj).copy()
    label[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(label, LPS), bad)
    out = tmp_path / "cache"
    expected = rf"(?s)1 of 3 cases failed .*{CASES[1]}: .*_seg.nii.gz: label values not in the brats scheme: 3"
    with pytest.raises(ValueError, match=expected):
        build(data, out)
    assert (out / CASES[0] / "meta.json").exists() and not (out / CASES[1] / "meta.json").exists()
    with pytest.raises(DataError, match="incomplete"):
        load_cache(out)


def test_load_cache_errors(data, tmp_path):
    with pytest.raises(ValueError, match="no cache folder here"):
        load_cache(tmp_path / "nothing")
    out = build(data, tmp_path / "cache")
    (out / CASES[2] / "meta.json").unlink()
    with pytest.raises(DataError, match=f"case {CASES[2]} is incomplete"):
        load_cache(out)


def test_case_ids_cannot_escape_the_cache_and_cache_stays_outside_data(data, tmp_path):
    with pytest.raises(ValueError, match="cannot name a cache folder"):
        cache_mod.case_dir(tmp_path, "../evil")
    with pytest.raises(ValueError, match="must not be inside the dataset folder"):
        build(data, data / "cache")


def test_parallel_workers_match_one_process(data, tmp_path):
    one, two = build(data, tmp_path / "one"), build(data, tmp_path / "two", workers=2)
    for case_id in CASES:
        assert np.array_equal(load_cache(one).image(case_id), load_cache(two).image(case_id))


def test_resampled_cache_maps_back_to_the_original_grid(data, tmp_path):
    cache = load_cache(build(data, tmp_path / "cache", PreprocessConfig(target_spacing=(2.0, 2.0, 2.0))))
    meta = cache.meta(CASES[0])
    assert meta["spacing"] == pytest.approx([2.0, 2.0, 2.0], abs=0.2)
    assert cache.label(CASES[0]).shape == tuple(meta["resample"]["to_shape"])
    assert to_original(np.asarray(cache.label(CASES[0])), meta).shape == SHAPE


def test_cli_preprocess(data, tmp_path, capsys):
    assert cli.main(["preprocess", str(data), "--out", str(tmp_path / "cache"), "--workers", "1"]) == 0
    assert "3 cases" in capsys.readouterr().out
    assert cli.main(["preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "c2")]) == 2
