"""The viewer's data: crop box, 8-bit images in their own units, exact label maps in place, and
the page that carries them (one NiiVue script, one data block per case, nothing fetched)."""
from __future__ import annotations

import base64
import gzip
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest

from glioseg.cli import main
from glioseg.data.formats import discover
from glioseg.data.io import Image
from glioseg.data.labels import get_scheme
from glioseg.evaluation import viewer
from glioseg.evaluation.evaluate import evaluate
from glioseg.evaluation.report import cases_from_dataset, write_report
from glioseg.evaluation.viewer_page import niivue_script, viewer_section

from ._synthetic import LPS, brats_label, write_brats_case

SHAPE = (32, 30, 24)


def _decode(text: str) -> nib.Nifti1Image:
    raw = gzip.decompress(base64.b64decode(text))
    return nib.Nifti1Image.from_bytes(raw)


def _image(array, affine=LPS) -> Image:
    return Image(np.asarray(array), np.asarray(affine, float), nib.Nifti1Header(), None)


def test_crop_box_holds_every_nonzero_voxel_of_images_and_labels_with_a_margin():
    image = np.zeros(SHAPE)
    image[5:20, 6:22, 4:15] = 1
    label = np.zeros(SHAPE, np.uint8)
    label[24, 10, 10] = 2  # outside the image's box: the box must still hold it
    box = viewer.crop_box([image, label], margin=2)
    assert box == (slice(3, 27), slice(4, 24), slice(2, 17))
    assert viewer.crop_box([np.zeros(SHAPE)]) == tuple(slice(0, n) for n in SHAPE)
    assert viewer.crop_box([np.ones(SHAPE)], margin=5) == tuple(slice(0, n) for n in SHAPE)


def test_quantize_keeps_values_in_their_units_to_half_a_level_and_clips_the_brightest():
    rng = np.random.default_rng(0)
    array = rng.normal(500, 80, (20, 20, 20)).astype(np.float32)
    array[0, 0, 0] = 1e5  # one hot voxel must not flatten the contrast
    stored, slope, inter = viewer.quantize(array)
    assert stored.dtype == np.uint8 and stored.max() == viewer.LEVELS
    top = np.percentile(array[array != 0], viewer.TOP_PERCENTILE)
    inside = array <= top
    restored = stored * slope + inter
    assert np.abs(restored - array)[inside].max() <= slope / 2 + 1e-3
    assert restored[0, 0, 0] == pytest.approx(top, abs=slope)


def test_viewer_case_embeds_exact_labels_in_place_and_images_in_scanner_mm():
    rng = np.random.default_rng(1)
    brain = np.zeros(SHAPE, np.float32)
    brain[4:28, 3:27, 2:22] = rng.uniform(100, 900, (24, 24, 20))
    label = brats_label(SHAPE, rng, (16, 15, 12)) * (brain > 0)
    case = viewer.viewer_case("C1", get_scheme("brats"), {"FLAIR": _image(brain), "T1": _image(brain * 2)},
                              {"prediction": _image(label)}, {"header": [], "rows": []})
    assert case.offset == (2, 1, 0)
    pred = _decode(case.labels["prediction"])
    i, j, k = case.offset
    cut = np.asarray(pred.dataobj)
    assert cut.dtype == np.uint8 and (cut == label[i:i + cut.shape[0], j:j + cut.shape[1], k:k + cut.shape[2]]).all()
    assert (cut > 0).sum() == (label > 0).sum()  # every labelled voxel is in the box
    # The box's voxel (0, 0, 0) is voxel `offset` of the original grid, in scanner mm.
    assert np.allclose(pred.affine, LPS @ np.array([[1, 0, 0, i], [0, 1, 0, j], [0, 0, 1, k], [0, 0, 0, 1]]))
    assert int(pred.header["sform_code"]) == 1 and int(pred.header["qform_code"]) == 1
    flair = _decode(case.images["FLAIR"])
    assert flair.get_data_dtype() == np.uint8
    values = flair.get_fdata()  # scl_slope / scl_inter applied: the image's own units
    original = brain[i:i + cut.shape[0], j:j + cut.shape[1], k:k + cut.shape[2]]
    assert np.abs(values - original).max() <= (original.max() - original.min()) / viewer.LEVELS
    # The crosshair starts on the tumour, and the inverse affine gives original voxel indices.
    start = np.array(case.start) + case.offset
    assert label[tuple(start)] > 0
    assert np.allclose(np.array(case.mm_to_voxel) @ [*case.start_mm, 1], [*start, 1])
    assert [entry["value"] for entry in case.legend] == [1, 2, 4]


def test_metrics_table_shows_dice_hd95_and_volumes_or_volumes_alone():
    rows = [{"case": "c", "region": r, "dice": 0.91234, "hd95": 3.0, "pred_ml": 12.0, "ref_ml": float("nan")}
            for r in ("WT", "TC", "ET")]
    table = viewer.metrics_table(rows, {})
    assert table["header"] == ["region", "Dice", "HD95 mm", "pred mL", "ref mL"]
    assert table["rows"][0] == ["WT", "0.912", "3.00", "12.0", "n/a"]
    alone = viewer.metrics_table(None, {"prediction": {"WT": 1.25, "TC": 0.5, "ET": 0.0}})
    assert alone == {"header": ["region", "prediction mL"],
                     "rows": [["WT", "1.2"], ["TC", "0.5"], ["ET", "0.0"]]}


def test_page_escapes_script_ends_in_its_data():
    case = viewer.ViewerCase("a</script>b", {"FLAIR": "AAAA"}, {}, (0, 0, 0), (1, 1, 1), (0, 0, 0),
                             (0.0, 0.0, 0.0), np.eye(4).tolist(), [], {"header": [], "rows": []})
    page = viewer_section([case])
    data = re.search(r'id="gv-case-0">(.*?)</script>', page).group(1)
    assert json.loads(data)["id"] == "a</script>b"
    assert viewer_section([]) == ""


@pytest.fixture
def evaluated(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    pred.mkdir()
    for n, case in enumerate(("Brats18_V_001_1", "Brats18_V_002_1")):
        label = brats_label(SHAPE, np.random.default_rng(n), (14, 15, 12))
        write_brats_case(root, case, label, seed=n)
        nib.save(nib.Nifti1Image(label, LPS), str(pred / f"{case}.nii.gz"))
    evaluate(pred, root, tmp_path / "eval")
    return root, pred, tmp_path / "eval"


def test_report_carries_one_viewer_with_every_drawn_case_and_fetches_nothing(evaluated, tmp_path):
    root, pred, _ = evaluated
    out = write_report(tmp_path / "r.html", cases=cases_from_dataset(discover(root), pred), max_cases=1)
    html = out.read_text()
    assert html.count(niivue_script()) == 1 and html.count('id="gv-canvas"') == 1
    blocks = re.findall(r'<script type="application/json" id="gv-case-\d+">(.*?)</script>', html)
    assert len(blocks) == 1  # --max-cases applies to the viewer too
    case = json.loads(blocks[0])
    assert case["id"] == "Brats18_V_001_1" and list(case["images"]) == ["FLAIR", "T1", "T1ce", "T2"]
    assert list(case["labels"]) == ["reference", "prediction"]
    # Nothing outside the file is loaded: no src/href to another place.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', html)


def test_cli_no_viewer_and_evaluate_report(evaluated, tmp_path):
    root, pred, metrics = evaluated
    small = tmp_path / "small.html"
    assert main(["report", "--data", str(root), "--pred", str(pred), "--metrics", str(metrics),
                 "--out", str(small), "--no-viewer"]) == 0
    assert "gv-canvas" not in small.read_text() and "<script" not in small.read_text()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(root), "--out", str(tmp_path / "ev")]) == 0
    html = (tmp_path / "ev" / "report.html").read_text()
    case = json.loads(re.search(r'id="gv-case-0">(.*?)</script>', html).group(1))
    assert case["table"]["header"][1] == "Dice" and case["table"]["rows"][0][1] == "1.000"
