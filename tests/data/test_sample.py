"""The bundled sample case: a real TCIA case, unchanged, copied out verified and atomically."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from glioseg.cli import main
from glioseg.data.errors import DataError
from glioseg.data.formats import discover
from glioseg.data.sample import NOTICE, SAMPLE_CASE, expected_sums, sample_root, write_sample


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_package_holds_the_tcia_case_and_no_2013_case():
    names = sorted(p.name for p in Path(str(sample_root())).rglob("*") if p.is_file())
    assert names == sorted([NOTICE, "SHA256SUMS"] + [f"{SAMPLE_CASE}_{c}.nii.gz"
                                                     for c in ("flair", "t1", "t1ce", "t2", "seg")])
    assert not any("2013" in n for n in names)
    notice = (Path(str(sample_root())) / NOTICE).read_text()
    for text in ("CC BY 3.0", "doi:10.1109/TMI.2014.2377694", "doi:10.1038/sdata.2017.117", "arXiv:1811.02629"):
        assert text in notice


@pytest.mark.realdata
def test_the_sample_is_the_shared_case_unchanged(shared_data):
    for name, digest in expected_sums().items():
        assert _sha(shared_data / "brats18" / name) == digest


def test_sample_cli_writes_a_readable_case_folder(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / SAMPLE_CASE
    assert str(folder) in capsys.readouterr().out
    for name, digest in expected_sums().items():
        assert _sha(folder / Path(name).name) == digest
    assert (folder / NOTICE).read_text() == (sample_root() / NOTICE).read_text()
    dataset = discover(tmp_path / "out")
    assert [c.case_id for c in dataset.cases] == [SAMPLE_CASE] and dataset.cases[0].label is not None
    assert [p.name for p in (tmp_path / "out").iterdir()] == [SAMPLE_CASE]


def test_an_existing_case_folder_is_not_overwritten(tmp_path, caplog):
    (tmp_path / SAMPLE_CASE).mkdir()
    (tmp_path / SAMPLE_CASE / "mine.txt").write_text("keep")
    assert main(["sample", str(tmp_path)]) == 2
    assert "already exists" in caplog.text
    assert [p.name for p in (tmp_path / SAMPLE_CASE).iterdir()] == ["mine.txt"]


def test_a_damaged_packaged_file_leaves_nothing(tmp_path):
    root = tmp_path / "sample"
    shutil.copytree(Path(str(sample_root())), root)
    label = root / SAMPLE_CASE / f"{SAMPLE_CASE}_seg.nii.gz"
    data = bytearray(label.read_bytes())
    data[100] ^= 0xFF
    label.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{label.name}: the packaged sample file differs from SHA256SUMS"):
        write_sample(tmp_path / "out", root=root)
    assert list((tmp_path / "out").iterdir()) == []
