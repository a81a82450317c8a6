"""The built wheel carries the package data: the sample case, the released models, the recipes.

The wheel is built from a copy of the source tree (so stale ``build/`` folders cannot hide a
missing file) with the installed setuptools, as ``pip wheel --no-build-isolation`` does; its
file list is read with zipfile.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from glioseg.data.sample import expected_sums
from glioseg.inference import released

REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "demo-output", "runs", ".part-*")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    tree, out = tmp_path_factory.mktemp("tree") / "glioseg", tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tree, ignore=_NOT_SOURCE)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
               str(tree), "-w", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = list(out.glob("glioseg-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        return archive.namelist()


def test_wheel_has_the_sample_case_with_its_notice(wheel_names):
    sample = "glioseg/assets/sample/"
    expected = {sample + "NOTICE.md", sample + "SHA256SUMS"} | {sample + name for name in expected_sums()}
    assert expected <= set(wheel_names)
    assert len(expected_sums()) == 5


def test_wheel_has_the_released_index_and_every_indexed_file(wheel_names):
    expected = {"glioseg/released/index.json"}
    for name in released.released_names():
        expected |= {f"glioseg/released/{name}/{file}" for file in released.entry(name)["files"]}
    assert expected <= set(wheel_names)
    shipped = {n for n in wheel_names if n.startswith("glioseg/released/")}
    assert shipped == expected, "files under glioseg/released that the index does not list"


def test_wheel_has_the_recipes_and_the_atlas(wheel_names):
    recipes = {f"glioseg/recipes/{p.name}" for p in (REPO / "src" / "glioseg" / "recipes").glob("*.yaml")}
    assert recipes and recipes <= set(wheel_names)
    assert {"glioseg/assets/ATLAS_NOTICE.md", "glioseg/assets/t1_skullstripped_brats_space.nii.gz"} <= set(wheel_names)


def test_wheel_has_the_viewer_script_with_its_licences(wheel_names):
    niivue = "glioseg/evaluation/assets/niivue/"
    assert {niivue + name for name in ("niivue.umd.js", "LICENSE", "THIRD_PARTY.md", "VERSION")} <= set(wheel_names)
