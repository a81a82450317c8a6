"""Figures: orientation of every view (asymmetric markers catch flips), colours, training curves."""
from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import pytest

from glioseg.data.labels import get_scheme
from glioseg.run_io import RunFiles
from glioseg.evaluation.figures import (
    COLOURS, display_slice, label_colours, overlay_figure, slice_rgb, to_ras, training_curves,
)

from ._synthetic import LPS, write_run

BRATS = get_scheme("brats")
SHAPE = (12, 10, 8)  # RAS: x → patient's right, y → anterior, z → superior
RIGHT, ANTERIOR, SUPERIOR = (10, 5, 4), (6, 8, 4), (6, 5, 7)


def _markers() -> tuple[np.ndarray, np.ndarray]:
    image = np.full(SHAPE, 100.0, dtype=np.float32)  # one value: the window maps it to black
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[RIGHT], label[ANTERIOR], label[SUPERIOR] = BRATS.edema, BRATS.enhancing, BRATS.core
    return image, label


def _where(rgb: np.ndarray, colour, alpha=0.5) -> list[tuple[int, int]]:
    expected = np.round(255 * alpha * np.asarray(colour)).astype(np.uint8)
    return [tuple(int(i) for i in p) for p in np.argwhere(np.all(rgb == expected, axis=-1))]


@pytest.mark.parametrize("convention, right_column", [("radiological", 1), ("neurological", 10)])
def test_axial_and_coronal_views_put_the_patients_right_where_the_convention_says(convention, right_column):
    image, label = _markers()
    axial = slice_rgb(image, label, BRATS, "axial", 4, convention)
    assert axial.shape == (10, 12, 3)
    assert _where(axial, COLOURS["edema"]) == [(10 - 1 - 5, right_column)]
    assert _where(axial, COLOURS["enhancing"]) == [(1, 5 if convention == "radiological" else 6)]  # anterior up
    coronal = slice_rgb(image, label, BRATS, "coronal", 5, convention)
    assert coronal.shape == (8, 12, 3)
    assert _where(coronal, COLOURS["core"]) == [(0, 5 if convention == "radiological" else 6)]  # superior up
    assert _where(coronal, COLOURS["edema"]) == [(8 - 1 - 4, right_column)]


def test_sagittal_view_is_superior_up_anterior_left():
    image, label = _markers()
    sagittal = slice_rgb(image, label, BRATS, "sagittal", 6)
    assert sagittal.shape == (8, 10, 3)
    assert _where(sagittal, COLOURS["core"]) == [(0, 10 - 1 - 5)]
    assert _where(sagittal, COLOURS["enhancing"]) == [(8 - 1 - 4, 1)]


def test_lps_files_are_reoriented_to_ras():
    lps = np.zeros((6, 5, 4))
    lps[0, 0, 3] = 1  # i=0 is the patient's right-most column of an LPS file, j=0 the anterior-most
    affine = LPS.copy()
    affine[1, 3] = 4.0
    ras, ras_affine = to_ras(lps, affine)
    assert np.argwhere(ras).tolist() == [[5, 4, 3]]
    np.testing.assert_allclose(ras_affine @ [5, 4, 3, 1], affine @ [0, 0, 3, 1])
    assert display_slice(ras, "axial", 3)[0, 0] == 1  # radiological: right on the left, anterior up


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_overlay_png_shows_a_right_sided_marker_on_the_conventions_side(convention):
    image, label = np.full((40, 40, 20), 50.0), np.zeros((40, 40, 20), np.uint8)
    label[30:36, 18:22, 8:12] = BRATS.edema  # patient's right half
    png = overlay_figure(image, label, BRATS, planes=("axial",), crop=False, convention=convention, alpha=1.0)
    rgb = matplotlib.image.imread(io.BytesIO(png))[..., :3]
    dark = np.all(rgb < 0.2, axis=-1)  # the black panel; text is too thin to fill half a row or column
    rows = np.flatnonzero(dark.sum(axis=1) > dark.sum(axis=1).max() / 2)
    cols = np.flatnonzero(dark.sum(axis=0) > dark.sum(axis=0).max() / 2)
    panel = rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    green = np.argwhere(np.all(np.abs(panel - COLOURS["edema"]) < 0.05, axis=-1))
    assert len(green) > 20
    on_left = green[:, 1].mean() < panel.shape[1] / 2
    assert on_left == (convention == "radiological")
    assert green[:, 0].mean() == pytest.approx(panel.shape[0] / 2, rel=0.15)  # y 18-21 of 40: middle row


def test_label_colours_follow_meaning_not_number():
    msd, brats = label_colours(get_scheme("msd")), label_colours(BRATS)
    assert msd[1][1] == brats[2][1] == COLOURS["edema"]
    assert msd[2][1] == brats[1][1] == COLOURS["core"]
    assert msd[3][1] == brats[4][1] == COLOURS["enhancing"]
    assert label_colours(get_scheme("brats2023"))[4][1] == COLOURS["no region"]
    assert label_colours(get_scheme("brats2013"))[1][1] == COLOURS["other core"]
    assert "edema" in brats[2][0]


@pytest.mark.parametrize("events", [True, False])
def test_training_curves_png(tmp_path, events):
    png = training_curves(write_run(tmp_path / "run", events=events))
    assert png.startswith(b"\x89PNG")
    assert matplotlib.image.imread(io.BytesIO(png)).shape[:2] == (840, 900)
    assert np.isnan(RunFiles(tmp_path / "run").read_metrics()[0]["val_dice_wt"])


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    RunFiles(tmp_path).metrics.write_text("case,region,dice\n")
    with pytest.raises(ValueError, match="not a training run"):
        training_curves(tmp_path)
