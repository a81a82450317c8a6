"""The report's 3D viewer in a real browser: headless Chromium opens a report of phantom cases
offline, the viewer draws, and the screenshot shows the image and the label colours where the
tumour is; a broken viewer script or broken embedded data is caught by the same check."""
from __future__ import annotations

import colorsys
import io
import re

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from glioseg.data.formats import discover
from glioseg.data.phantom import write_dataset
from glioseg.evaluation.evaluate import evaluate
from glioseg.evaluation.figures import label_colours
from glioseg.evaluation.report import cases_from_dataset, write_report
from glioseg.evaluation.viewer_page import niivue_script

from ._browser import find_browser, open_pages

if find_browser() is None:
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)
pytest.importorskip("websocket", reason="websocket-client (a test dependency) is not installed")

SHAPE = (96, 96, 64)
# Axial view with the prediction alone, so that the colour at the crosshair is the prediction's.
AXIAL = ("document.querySelector('[data-view=\"0\"]').click();"
         "document.querySelector('[data-label=\"reference\"]').click()")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of two phantom cases; the prediction of each is its expert label shifted 2 voxels."""
    tmp = tmp_path_factory.mktemp("viewer")
    write_dataset(tmp / "data", 2, seed=3, shape=SHAPE)
    pred = tmp / "pred"
    pred.mkdir()
    dataset = discover(tmp / "data")
    for case in dataset.cases:
        ref = nib.load(str(case.label))
        shifted = np.roll(np.asarray(ref.dataobj), 2, axis=0)
        nib.save(nib.Nifti1Image(shifted, ref.affine, ref.header), str(pred / f"{case.case_id}.nii.gz"))
    result = evaluate(pred, tmp / "data", tmp / "eval")
    out = write_report(tmp / "report.html", cases=cases_from_dataset(dataset, pred), metrics=result.rows,
                       summary=result.summary)
    first = dataset.cases[0]
    return out, np.asarray(nib.load(str(pred / f"{first.case_id}.nii.gz")).dataobj), first, dataset.scheme


def _hue(rgb) -> float:
    return 360 * colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def viewer_problems(result, prediction: np.ndarray, scheme) -> list[str]:
    """What is wrong with the page: its state and errors, the crosshair readout, and the screenshot's
    pixels in the axial view: grey brain round the crosshair, the prediction's colour at it."""
    problems = [f"viewer state {result.state!r}: {result.status}"] if result.state != "ready" else []
    problems += [f"page error: {e}" for e in result.errors]
    problems += [f"asked the network for {url}" for url in result.requests]
    found = re.search(r"voxel (\d+), (\d+), (\d+)", result.location)
    if not found:
        return problems + [f"no crosshair readout: {result.location!r}"]
    voxel = tuple(int(v) for v in found.groups())
    value = int(prediction[voxel])
    centre = tuple(int(round(c)) for c in np.argwhere(prediction > 0).mean(axis=0))
    if voxel != centre or value == 0:
        problems.append(f"crosshair at voxel {voxel} (label {value}); expected the tumour's centre {centre}")
    if not re.search(rf"prediction: {value} ", result.location):
        problems.append(f"readout does not give the prediction's label {value}: {result.location!r}")
    pixels = (matplotlib.image.imread(io.BytesIO(result.png))[..., :3] * 255).astype(int)
    box = result.canvas
    if not box:
        return problems + ["no canvas"]
    canvas = pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    magenta = (canvas[..., 0] > 200) & (canvas[..., 1] < 60) & (canvas[..., 2] > 200)
    if magenta.sum() < 100:
        return problems + ["no crosshair drawn on the canvas"]
    row, col = int(magenta.sum(axis=1).argmax()), int(magenta.sum(axis=0).argmax())
    patch = canvas[row - 6:row + 7, col - 6:col + 7].reshape(-1, 3)
    patch = patch[~((patch[:, 0] > 200) & (patch[:, 1] < 60) & (patch[:, 2] > 200))]
    coloured = patch[(patch.max(axis=1) - patch.min(axis=1)) > 40]
    expected = [round(255 * c) for c in label_colours(scheme)[value][1]]
    if len(coloured) < 0.6 * len(patch):
        problems.append(f"only {len(coloured)} of {len(patch)} pixels at the tumour are label-coloured")
    else:
        hue = float(np.median([_hue(p) for p in coloured]))
        if _hue_gap(hue, _hue(expected)) > 20:
            problems.append(f"colour at the tumour has hue {hue:.0f}°; label {value} is drawn at {_hue(expected):.0f}°")
    saturation = canvas.max(axis=2) - canvas.min(axis=2)
    grey_brain = ((saturation < 12) & (canvas.max(axis=2) > 40)).mean()
    if grey_brain < 0.1:
        problems.append(f"the image is missing: {grey_brain:.1%} of the canvas shows grey brain")
    if (saturation > 40).mean() > 0.3:
        problems.append(f"{(saturation > 40).mean():.0%} of the canvas is label-coloured: more than the tumour")
    return problems


def _broken(report_path, tmp_path, name, change):
    path = tmp_path / name
    path.write_text(change(report_path.read_text()))
    return path


# Not marked slow although it takes ~30 s (Chromium draws WebGL on the CPU): CI's `make test`
# skips slow tests, and this is the one check that the report's viewer works in a browser.
def test_viewer_draws_the_case_with_its_labels_and_breakage_is_caught(report, tmp_path):
    out, prediction, case, scheme = report
    script = niivue_script()
    bad_script = _broken(out, tmp_path, "bad_script.html",
                         lambda text: text.replace(script, script[:len(script) // 2], 1))
    # Every embedded volume's base64 loses 300 characters after its first 40 (the gzip header and
    # the start of the deflate stream), replaced by other valid base64.
    bad_data = _broken(out, tmp_path, "bad_data.html",
                       lambda text: re.sub(r'("H4sI[A-Za-z0-9+/]{36})[A-Za-z0-9+/]{300}', r"\1" + "A" * 300, text))
    assert bad_data.read_text() != out.read_text()
    good, broken_script, broken_data = open_pages([out, bad_script, bad_data], timeout=240, before_shot=AXIAL)
    (tmp_path / "viewer.png").write_bytes(good.png)  # for a look: pytest's tmp folder
    assert viewer_problems(good, prediction, scheme) == []
    assert good.location.startswith("voxel") and "FLAIR" in good.location and case.case_id in good.status
    assert viewer_problems(broken_script, prediction, scheme), "a truncated NiiVue script went unnoticed"
    assert viewer_problems(broken_data, prediction, scheme), "corrupted base64 volumes went unnoticed"
