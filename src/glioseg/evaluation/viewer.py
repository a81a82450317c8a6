"""The data of the report's 3D viewer: a case's images and label maps as small embedded NIfTI files.

The viewer (NiiVue, vendored in ``assets/niivue``; the page is :mod:`viewer_page`) reads NIfTI
from base64 in the page itself, so the report stays one file that opens offline. To keep it
small, every volume is cropped to one box per case (the voxels that are non-zero in any image
or label map, plus a margin: the brain of a skull-stripped scan), and the images are stored as
8-bit voxels of 32 levels (:func:`quantize`) from the image's minimum to the 99.9th percentile of its
non-zero voxels, brighter voxels clipped to the top level, with ``scl_slope`` / ``scl_inter``
set so that the value under the crosshair reads in the image's own units. Label maps are cut to
the same box and stored exactly (the box holds every labelled voxel). Each volume keeps the
affine of its place in the original grid, so positions in mm are the scanner's, and the page
adds the box's offset to show voxel indices of the original files.
"""
from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from glioseg.data.io import Image
from glioseg.data.labels import REGIONS, LabelScheme
from glioseg.evaluation import figures

MARGIN = 2            # voxels kept round the non-zero box
TOP_PERCENTILE = 99.9  # of non-zero voxels: the top of the 8-bit range
# 32 levels (5 bits of information in each 8-bit voxel) keep the four images of a BraTS case at
# ~2.5 MB of base64 (256 levels: 5.2 MB, 128: 4.3 MB, 64: 3.3 MB; the bundled sample case), so a
# report of ten cases stays near 30 MB. The page interpolates linearly, which hides the steps.
LEVELS = 31
CROP_NOTE = (f"Viewer volumes are cropped to the box of voxels that are non-zero in any image or label map "
             f"(plus {MARGIN} voxels); images are stored with {LEVELS + 1} grey levels from their minimum to the "
             f"{TOP_PERCENTILE}th percentile of non-zero voxels (brighter voxels clipped); label maps are exact.")


@dataclass(frozen=True)
class ViewerCase:
    """One case as the page gets it: volumes as base64 .nii.gz, with what the page shows beside."""

    case_id: str
    images: dict[str, str]            # modality → base64 of an 8-bit .nii.gz
    labels: dict[str, str]            # "prediction" / "reference" → base64 of an exact .nii.gz
    offset: tuple[int, int, int]      # the box's first voxel in the original grid
    shape: tuple[int, int, int]       # the original grid
    start: tuple[int, int, int]       # the crosshair's first voxel, in the box
    start_mm: tuple[float, float, float]  # the same in scanner mm (the page places the crosshair by mm)
    mm_to_voxel: list                 # 4x4 inverse affine of the original grid: the readout's voxel indices
    legend: list[dict]                # value, name, rgb (0-255) of every label of the scheme
    table: dict = field(default_factory=dict)  # header + rows of the case's metrics

    def to_dict(self) -> dict:
        return {"id": self.case_id, "images": self.images, "labels": self.labels, "offset": list(self.offset),
                "shape": list(self.shape), "start": list(self.start),
                "start_mm": list(self.start_mm), "mm_to_voxel": self.mm_to_voxel, "legend": self.legend, "table": self.table}


def crop_box(arrays, margin: int = MARGIN) -> tuple[slice, slice, slice]:
    """The box of voxels non-zero in any of ``arrays`` (same 3-D shape), grown by ``margin``."""
    arrays = list(arrays)
    shape = arrays[0].shape
    any_nonzero = np.zeros(shape, dtype=bool)
    for array in arrays:
        any_nonzero |= array != 0
    if not any_nonzero.any():
        return tuple(slice(0, n) for n in shape)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(any_nonzero.any(axis=others))
        box.append(slice(max(0, int(hit[0]) - margin), min(shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(box)


def quantize(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``array`` as uint8 levels 0..LEVELS with (slope, intercept): value ≈ stored * slope + intercept."""
    array = np.asarray(array, dtype=np.float32)
    low = float(array.min()) if array.size else 0.0
    nonzero = array[array != 0]
    high = float(np.percentile(nonzero, TOP_PERCENTILE)) if nonzero.size else low
    if high <= low:
        high = low + 1.0
    slope = (high - low) / LEVELS
    stored = np.clip(np.rint((array - low) / slope), 0, LEVELS).astype(np.uint8)
    return stored, slope, low


def shifted_affine(affine: np.ndarray, offset) -> np.ndarray:
    """The affine of a sub-grid whose voxel (0, 0, 0) is voxel ``offset`` of the grid of ``affine``."""
    shift = np.eye(4)
    shift[:3, 3] = offset
    return np.asarray(affine, dtype=np.float64) @ shift


def nifti_base64(array: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> str:
    """A gzipped NIfTI-1 file of ``array`` (qform = sform = ``affine``, code 1) as base64 text."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_slope_inter(slope, inter)
    # mtime=0: the same volume gives the same bytes, so reports can be compared.
    return base64.b64encode(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)).decode("ascii")


def legend(scheme: LabelScheme) -> list[dict]:
    """The scheme's labels with the report's colours (those of the static figures)."""
    return [{"value": value, "name": text.split(": ", 1)[1], "rgb": [round(255 * c) for c in rgb]}
            for value, (text, rgb) in figures.label_colours(scheme).items()]


def start_voxel(labels: dict[str, np.ndarray], shape) -> tuple[int, int, int]:
    """The voxel nearest the centre of mass of the prediction's (else the reference's) tumour,
    the box's centre when neither has one: where the crosshair starts."""
    for name in ("prediction", "reference"):
        if name in labels and labels[name].any():
            return tuple(int(round(c)) for c in np.argwhere(labels[name] > 0).mean(axis=0))
    return tuple(int(n // 2) for n in shape)


def metrics_table(rows: list[dict] | None, volumes: dict[str, dict[str, float]]) -> dict:
    """Header and rows of the case's table: Dice / HD95 / volumes from its metrics rows, or the
    volumes of each label map when the case was not evaluated."""
    if rows:
        by_region = {r["region"]: r for r in rows}
        header = ["region", "Dice", "HD95 mm", "pred mL", "ref mL"]
        body = [[region] + [_fmt(by_region.get(region, {}).get(k), d)
                            for k, d in (("dice", 3), ("hd95", 2), ("pred_ml", 1), ("ref_ml", 1))]
                for region in REGIONS]
        return {"header": header, "rows": body}
    names = list(volumes)
    return {"header": ["region", *[f"{n} mL" for n in names]],
            "rows": [[region, *[_fmt(volumes[n].get(region), 1) for n in names]] for region in REGIONS]}


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def viewer_case(case_id: str, scheme: LabelScheme, images: dict[str, Image], labels: dict[str, Image],
                table: dict) -> ViewerCase:
    """A case's viewer data from its images and label maps as read (one grid, checked by the caller)."""
    arrays = [im.array for im in images.values()] + [lab.array for lab in labels.values()]
    box = crop_box(arrays)
    offset = tuple(int(s.start) for s in box)
    original = next(iter(images.values())).affine
    affine = shifted_affine(original, offset)
    encoded_images = {}
    for name, image in images.items():
        stored, slope, inter = quantize(image.array[box])
        encoded_images[name] = nifti_base64(stored, affine, slope, inter)
    cut = {name: np.ascontiguousarray(lab.array[box], dtype=np.uint8) for name, lab in labels.items()}
    encoded_labels = {name: nifti_base64(array, affine) for name, array in cut.items()}
    shape = next(iter(images.values())).array.shape[:3]
    start = start_voxel(cut, tuple(s.stop - s.start for s in box))
    start_mm = tuple(float(v) for v in (affine @ [*start, 1.0])[:3])
    return ViewerCase(case_id, encoded_images, encoded_labels, offset, tuple(int(n) for n in shape),
                      start, start_mm, np.linalg.inv(original).round(9).tolist(), legend(scheme), table)
