"""``glioseg predict --report`` and the label files for 3D Slicer and ITK-SNAP beside each label map."""
from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.labels import get_scheme
from glioseg.evaluation.figures import label_colours
from glioseg.training.checkpoint import save_checkpoint
from ._fakes import LPS, tiny_bundle, write_case

slicerio = pytest.importorskip("slicerio")


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_report")
    checkpoint = save_checkpoint(tmp / "best.pt", {"bundle": tiny_bundle(0).to_state()})
    folder, _ = write_case(tmp / "data", LPS)
    out = tmp / "out"
    assert main(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out), "--report"]) == 0
    return folder, out


def test_slicer_segmentation_holds_the_label_map_with_named_coloured_segments(predicted):
    folder, out = predicted
    label = nib.load(str(out / f"{folder.name}.nii.gz"))
    seg = slicerio.read_segmentation(str(out / f"{folder.name}.seg.nrrd"))
    assert np.array_equal(seg["voxels"], np.asarray(label.dataobj))
    # Slicer works in LPS: the same voxel lands on the same point as in the NIfTI's RAS affine.
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ seg["ijkToLPS"], label.affine)
    scheme = get_scheme("brats")
    names = {s["labelValue"]: (s["name"], s["color"]) for s in seg["segments"]}
    assert set(names) == set(scheme.labels)
    for value, (text, rgb) in label_colours(scheme).items():
        assert names[value][0] == text.split(": ", 1)[1]
        assert np.allclose(names[value][1], rgb, atol=0.003)
    sidecar = json.loads((out / f"{folder.name}.json").read_text())
    assert sidecar["outputs"]["segments"]["file"] == f"{folder.name}.seg.nrrd"


def test_itksnap_and_slicer_tables_name_and_colour_every_label(predicted):
    _, out = predicted
    itk = (out / "brats-labels.itksnap.txt").read_text()
    rows = re.findall(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([01])\s+([01])\s+"([^"]*)"$', itk, re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 4]
    assert rows[3][1:4] == ("255", "230", "0") and rows[3][7] == "enhancing tumour"
    ctbl = [line.split() for line in (out / "brats-labels.ctbl").read_text().splitlines() if not line.startswith("#")]
    assert [(int(r[0]), len(r)) for r in ctbl] == [(0, 6), (1, 6), (2, 6), (4, 6)]
    assert ctbl[2][1:5] == ["edema", "38", "217", "38"]


def test_rerun_skips_the_case_only_while_its_segmentation_is_intact(predicted, tmp_path):
    folder, out = predicted
    checkpoint = save_checkpoint(tmp_path / "best.pt", {"bundle": tiny_bundle(0).to_state()})
    argv = ["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out)]
    (out / f"{folder.name}.seg.nrrd").write_bytes(b"damaged")
    assert main(argv) == 0
    assert slicerio.read_segmentation(str(out / f"{folder.name}.seg.nrrd"))["segments"]


def test_predict_report_shows_the_prediction_without_an_expert_label(predicted):
    folder, out = predicted
    html = (out / "report.html").read_text()
    case = json.loads(re.search(r'id="gv-case-0">(.*?)</script>', html).group(1))
    assert case["id"] == folder.name and list(case["labels"]) == ["prediction"]
    assert list(case["images"]) == ["FLAIR", "T1", "T1ce", "T2"]
    assert case["table"]["header"] == ["region", "prediction mL"]
