"""Several datasets as one: discovery, unique ids, one cache with each case's source and labels converted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main as cli_main
from glioseg.data.cache import input_digests, is_current, load_cache
from glioseg.data.formats import discover
from glioseg.data.labels import SCHEMES, convert_labels, labels_to_regions
from glioseg.data.phantom import make_case, write_dataset, write_msd_dataset
from glioseg.data.preprocess import PreprocessConfig, preprocess_dataset, to_original
from glioseg.data.sources import as_sources, discover_all
from glioseg.errors import InputError

SHAPE = (48, 48, 40)


@pytest.fixture(scope="module")
def two_formats(tmp_path_factory) -> dict[str, Path]:
    """brats: three BraTS-layout phantoms (labels 0/1/2/4); msd: two MSD-layout phantoms (0/1/2/3),
    ids BRATS_001.. (no site)."""
    root = tmp_path_factory.mktemp("sources")
    write_dataset(root / "brats", cases=3, seed=0, shape=SHAPE)
    write_msd_dataset(root / "msd", cases=2, seed=1, shape=SHAPE)
    return {"brats": root / "brats", "msd": root / "msd", "root": root}


@pytest.mark.parametrize("source, target", [(s, t) for s in SCHEMES for t in SCHEMES])
def test_converted_labels_keep_every_region(source, target):
    src = SCHEMES[source]
    label = np.array(sorted(src.allowed), dtype=np.uint8)
    converted = convert_labels(label, src, SCHEMES[target])
    assert set(np.unique(converted)) <= SCHEMES[target].allowed
    np.testing.assert_array_equal(labels_to_regions(converted, SCHEMES[target]), labels_to_regions(label, src))


def test_msd_to_brats_values():
    msd, brats = SCHEMES["msd"], SCHEMES["brats"]
    np.testing.assert_array_equal(convert_labels(np.array([0, 1, 2, 3], np.uint8), msd, brats), [0, 2, 1, 4])
    # a 2024 resection cavity is in no region: background, not "enhancing" (4 in BraTS 2017-2021)
    np.testing.assert_array_equal(convert_labels(np.array([3, 4], np.uint8), SCHEMES["brats2023"], brats), [4, 0])


def test_each_dataset_keeps_its_format_and_source(two_formats):
    sources = discover_all([two_formats["brats"], two_formats["msd"]])
    assert sources.names == ("brats", "msd")
    assert [d.format for d in sources.datasets] == ["brats", "msd"]
    assert sources.scheme.name == "brats"          # conventions differ: the canonical one
    assert sources.source_of("BRATS_001") == "msd" and sources.labels_from("BRATS_001") == "msd"
    assert sources.source_of("Phantom_SITEA_001") == "brats" and sources.labels_from("Phantom_SITEA_001") is None
    single = discover_all([two_formats["msd"]])
    assert single.single and single.scheme.name == "msd" and single.labels_from("BRATS_001") is None


def test_one_cache_over_two_formats_holds_each_case_converted_from_its_own_file(two_formats, tmp_path):
    sources = discover_all([two_formats["brats"], two_formats["msd"]])
    cache = load_cache(preprocess_dataset(sources, tmp_path / "cache", PreprocessConfig(), workers=1))
    assert cache.scheme.name == "brats" and len(cache) == 5
    assert cache.index["format"] == "several"
    assert cache.case_sources == {**{f"Phantom_SITE{s}_00{i}": "brats" for s, i in (("A", 1), ("B", 2), ("C", 3))},
                                  "BRATS_001": "msd", "BRATS_002": "msd"}
    assert [d["name"] for d in cache.datasets] == ["brats", "msd"]
    for dataset in sources.datasets:
        for case in dataset.cases:
            meta = cache.meta(case.case_id)
            on_file = np.asarray(nib.load(case.label).dataobj)
            back = to_original(np.asarray(cache.label(case.case_id)), meta)
            assert meta["scheme"] == "brats"
            if dataset.format == "msd":
                assert meta["labels_from"] == "msd"
                assert set(np.unique(on_file)) == {0, 1, 2, 3}
                # MSD 1 edema, 2 non-enhancing, 3 enhancing -> BraTS 2, 1, 4, voxel for voxel
                for msd_value, brats_value in ((0, 0), (1, 2), (2, 1), (3, 4)):
                    assert np.all(back[on_file == msd_value] == brats_value)
                # and the MSD phantom is the BraTS phantom of the same draw: the same label map
                index = int(case.case_id.split("_")[1]) - 1
                np.testing.assert_array_equal(back, make_case(index, 1, SHAPE).label)
            else:
                assert "labels_from" not in meta
                np.testing.assert_array_equal(back, on_file)


def test_an_msd_cache_alone_keeps_msd_labels_and_is_current_until_mixed(two_formats, tmp_path):
    out = tmp_path / "cache"
    alone = load_cache(preprocess_dataset(discover(two_formats["msd"]), out, PreprocessConfig(), workers=1))
    assert alone.scheme.name == "msd" and alone.case_sources is None
    label_file = out / "BRATS_001" / "label.npy"
    first = label_file.stat().st_mtime_ns
    # used beside a BraTS dataset its labels are read as MSD and converted: the case is made again
    mixed = load_cache(preprocess_dataset(discover_all([two_formats["brats"], two_formats["msd"]]), out,
                                          PreprocessConfig(), workers=1))
    assert mixed.scheme.name == "brats" and label_file.stat().st_mtime_ns != first
    assert set(np.unique(mixed.label("BRATS_001"))) == {0, 1, 2, 4}
    # up to date only for labels converted from the same convention (same bytes read otherwise: remade)
    case = discover(two_formats["msd"]).cases[0]
    config = PreprocessConfig().to_dict()
    assert is_current(out / case.case_id, input_digests(case), config, "brats", "msd")
    assert not is_current(out / case.case_id, input_digests(case), config, "brats", None)


def test_one_dataset_writes_the_cache_it_always_wrote(two_formats, tmp_path):
    cache = load_cache(preprocess_dataset(as_sources(discover(two_formats["brats"])), tmp_path / "c",
                                          PreprocessConfig(), workers=1))
    # the index of one dataset: the keys and values it had before several datasets existed
    assert set(cache.index) == {"cache_version", "glioseg_version", "format", "source", "scheme", "channels",
                                "cases", "sites", "config"}
    assert cache.index["source"] == str(two_formats["brats"]) and cache.index["format"] == "brats"
    assert cache.case_sources is None and cache.source("Phantom_SITEA_001") is None
    assert all("labels_from" not in cache.meta(c) for c in cache.case_ids)


def test_colliding_case_ids_name_both_datasets_before_any_work(two_formats, tmp_path, caplog):
    copy = tmp_path / "brats-copy"
    shutil.copytree(two_formats["brats"], copy)
    with pytest.raises(InputError) as err:
        discover_all([two_formats["brats"], copy])
    message = str(err.value)
    assert "case ids occur in more than one dataset" in message
    assert (f"Phantom_SITEA_001 in brats ({two_formats['brats'] / 'Phantom_SITEA_001'}) and in brats-copy "
            f"({copy / 'Phantom_SITEA_001'})") in message
    out = tmp_path / "cache"
    assert cli_main(["preprocess", str(two_formats["brats"]), str(copy), "--out", str(out), "--workers", "1"]) == 2
    assert not out.exists()                            # nothing written
    assert "Phantom_SITEB_002 in brats" in caplog.text


def test_the_same_dataset_twice_is_refused(two_formats):
    with pytest.raises(InputError, match="given more than once"):
        discover_all([two_formats["brats"], two_formats["brats"] / "." ])


def test_verify_reports_each_dataset_and_all(two_formats, tmp_path, capsys):
    report = tmp_path / "verify.json"
    assert cli_main(["verify", str(two_formats["brats"]), str(two_formats["msd"]), "--workers", "1",
                     "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert f"== brats: {two_formats['brats']} (3 cases, brats, brats labels)" in out
    assert f"== msd: {two_formats['msd']} (2 cases, msd, msd labels)" in out
    assert "3 cases (brats, labels brats): 3 valid, 0 invalid" in out
    assert "2 cases (msd, labels msd): 2 valid, 0 invalid" in out
    assert out.rstrip().endswith("overall: 5 cases in 2 datasets (brats 3 (0 invalid), msd 2 (0 invalid)): "
                                 "5 valid, 0 invalid; 0 warnings")
    saved = json.loads(report.read_text())
    assert saved["valid"] is True and [d["name"] for d in saved["datasets"]] == ["brats", "msd"]
    assert [len(d["cases"]) for d in saved["datasets"]] == [3, 2]


def test_verify_of_one_dataset_prints_no_heading(two_formats, capsys):
    assert cli_main(["verify", str(two_formats["msd"]), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "==" not in out and "overall" not in out and "2 cases (msd, labels msd)" in out


@pytest.mark.realdata
def test_brats18_and_brats21_are_27_cases_with_their_sources(shared_data):
    sources = discover_all([shared_data / "brats18", shared_data / "brats21"])
    assert len(sources.cases) == 27 and sources.names == ("brats18", "brats21")
    assert sources.scheme.name == "brats" and all(d.format == "brats" for d in sources.datasets)
    counts = {n: sum(sources.source_of(c.case_id) == n for c in sources.cases) for n in sources.names}
    assert counts == {"brats18": 20, "brats21": 7}
    assert all(sources.source_of(c.case_id) == ("brats21" if c.case_id.startswith("BraTS2021_") else "brats18")
               for c in sources.cases)
    assert all(sources.labels_from(c.case_id) is None for c in sources.cases)   # both 2017-2021 labels
