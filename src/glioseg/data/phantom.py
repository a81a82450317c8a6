"""Synthetic BraTS-like cases: a real healthy anatomy, four contrasts, a nested tumour.

The anatomy is the bundled MNI/ICBM T1 template (``assets/ATLAS_NOTICE.md``) on the BraTS grid.
Tissue classes (CSF, grey and white matter) come from its intensities; each contrast maps the
template's T1 intensity piecewise-linearly onto that contrast's tissue values, which keeps the
template's partial-volume boundaries. A tumour (edema ⊃ core ⊃ enhancing rim ⊃ necrosis) with
lobulated, randomly oriented compartments is blended in, then a smooth multiplicative bias field,
a site-specific scale and Rician noise are applied. Everything is drawn from
``np.random.default_rng((seed, case_index))``: a case does not depend on how many are written.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from glioseg.data.formats import CHANNELS
from glioseg.data.io import write_image
from glioseg.data.labels import convert_labels, get_scheme
from glioseg.errors import InputError
from glioseg.files import atomic_path


BRATS_SHAPE = (240, 240, 155)
ATLAS = "t1_skullstripped_brats_space.nii.gz"
NEC, EDEMA, ENH = 1, 2, 4  # BraTS 2017–2021 labels

# Relative tissue values per contrast, white matter of T1 = 1. Order (CSF, GM, WM) and
# (edema, necrosis, enhancing). The relations are those of clinical glioma scans: FLAIR
# suppresses CSF and shows edema brightest; T2 is bright for CSF, edema and necrotic fluid;
# T1 shows CSF dark, WM bright, tumour hypo-intense; T1ce shows a bright rim round a dark core.
TISSUE = {"flair": (0.30, 0.95, 0.80), "t1": (0.35, 0.70, 1.00),
          "t1ce": (0.35, 0.72, 1.00), "t2": (1.60, 0.85, 0.65)}
TUMOUR = {"flair": (1.60, 0.90, 1.20), "t1": (0.70, 0.40, 0.65),
          "t1ce": (0.75, 0.35, 1.60), "t2": (1.30, 1.50, 1.00)}
GAIN = {"flair": 0.6, "t1": 1.0, "t1ce": 1.1, "t2": 1.2}


@dataclass(frozen=True)
class Site:
    """An acquisition site: raw intensity scale, bias-field strength (log units), noise / WM."""

    scale: float
    bias: float
    noise: float


SITES: dict[str, Site] = {
    "SITEA": Site(scale=500.0, bias=0.10, noise=0.020),
    "SITEB": Site(scale=1400.0, bias=0.20, noise=0.030),
    "SITEC": Site(scale=250.0, bias=0.06, noise=0.015),
}


@dataclass(frozen=True)
class Template:
    """The healthy anatomy on one grid (LPS BraTS orientation)."""

    t1: np.ndarray        # float32, template T1, 0 outside the brain
    brain: np.ndarray     # bool
    tissue: np.ndarray    # uint8: 0 background, 1 CSF, 2 GM, 3 WM
    anchors: np.ndarray   # (3,) template T1 means of CSF, GM, WM
    depth_mm: np.ndarray  # float32 distance to the brain's outside
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


@dataclass(frozen=True)
class PhantomCase:
    case_id: str
    site: str
    images: dict[str, np.ndarray]  # channel → int16 (X, Y, Z)
    label: np.ndarray              # uint8 (X, Y, Z), values {0, 1, 2, 4}
    tissue: np.ndarray             # uint8 (X, Y, Z), as Template.tissue
    affine: np.ndarray
    tumour: dict                   # centre (voxel) and radii (mm), for the record


def brats_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """The BraTS LPS affine (diag(-1,-1,1), origin (0, 239, 0)) for the same field of view
    sampled on ``shape``: voxel edges stay where the 1 mm grid's edges are."""
    s = np.asarray(BRATS_SHAPE, float) / np.asarray(shape, float)
    affine = np.diag([-s[0], -s[1], s[2], 1.0])
    affine[:3, 3] = [(1 - s[0]) / 2, 239 - (s[1] - 1) / 2, (s[2] - 1) / 2]
    return affine


def _atlas_lps() -> np.ndarray:
    """The bundled template as float32 on the BraTS LPS grid, checked against its affine."""
    with resources.as_file(resources.files("glioseg") / "assets" / ATLAS) as path:
        img = nib.load(str(path))
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine)
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt("LPS"))
        img = img.as_reoriented(ornt)
    if not np.allclose(img.affine, brats_affine(BRATS_SHAPE)) or img.shape != BRATS_SHAPE:
        raise ValueError(f"{path}: template geometry {img.shape} {img.affine.tolist()} is not the BraTS grid")
    return np.asarray(img.dataobj, dtype=np.float32)


def _resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear resampling of the whole field of view (voxel edges aligned), anti-aliased."""
    factor = np.asarray(volume.shape, float) / np.asarray(shape, float)
    if np.allclose(factor, 1):
        return volume.astype(np.float32, copy=True)
    sigma = np.maximum(0.0, (factor - 1) / 2)
    smooth = ndimage.gaussian_filter(volume, sigma, truncate=2.5) if sigma.any() else volume
    return ndimage.affine_transform(smooth, factor, offset=factor / 2 - 0.5, output_shape=shape,
                                    order=1, mode="constant", cval=0.0).astype(np.float32)


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 50) -> np.ndarray:
    """k-means of integer-valued intensities, run on their histogram (exact, and fast)."""
    counts = np.bincount(values.astype(np.int64))
    levels = np.nonzero(counts)[0].astype(float)
    weights = counts[levels.astype(int)].astype(float)
    centres = np.interp(np.linspace(0.1, 0.9, k), np.cumsum(weights) / weights.sum(), levels)
    for _ in range(iterations):
        nearest = np.abs(levels[:, None] - centres[None]).argmin(axis=1)
        centres = np.array([np.average(levels[nearest == j], weights=weights[nearest == j]) for j in range(k)])
    return np.sort(centres)


@functools.lru_cache(maxsize=2)
def load_template(shape: tuple[int, int, int] = BRATS_SHAPE) -> Template:
    """The healthy anatomy resampled onto ``shape`` (cached: building it is the slow part)."""
    atlas = _atlas_lps()
    anchors = _kmeans_1d(atlas[atlas > 0])
    mask = _resample((atlas > 0).astype(np.float32), shape)
    brain = mask > 0.5
    # Dividing by the resampled mask undoes the darkening of edge voxels by the zero background.
    t1 = np.where(brain, _resample(atlas, shape) / np.maximum(mask, 1e-3), 0).astype(np.float32)
    tissue = np.zeros(shape, np.uint8)
    tissue[brain] = 1 + np.abs(t1[brain][:, None] - anchors[None]).argmin(axis=1)
    affine = brats_affine(shape)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    depth = ndimage.distance_transform_edt(brain, sampling=spacing).astype(np.float32)
    for array in (t1, brain, tissue, anchors, depth, affine):
        array.flags.writeable = False  # shared by every case drawn from this cached template
    return Template(t1, brain, tissue, anchors, depth, affine)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lobes(rng: np.random.Generator, direction: np.ndarray, terms: int, freq: tuple[float, float]) -> np.ndarray:
    """A smooth random function of direction (..., 3) with values of order ±1: lobulated borders."""
    axes = _unit(rng, terms).astype(np.float32)
    freqs = rng.uniform(*freq, terms).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, terms).astype(np.float32)
    return np.cos((direction @ axes.T) * freqs + phases).sum(axis=-1) / np.float32(np.sqrt(terms / 2))


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float, order: int = 3) -> np.ndarray:
    """A smooth multiplicative field exp(Σ c·DCT basis) over the volume, as SPM models bias.

    The basis is separable, so the sum is three small contractions instead of order³ volumes.
    """
    basis = [np.cos(np.pi * np.arange(order)[:, None] * (np.arange(n)[None] + 0.5) / n).astype(np.float32)
             for n in shape]
    coeff = (rng.standard_normal((order,) * 3) / (1 + np.add.outer(np.add.outer(*[np.arange(order)] * 2),
                                                                   np.arange(order)))).astype(np.float32)
    coeff[0, 0, 0] = 0  # the global scale is the site's, not the bias field's
    log_field = np.einsum("ijk,ix,jy,kz->xyz", coeff, *basis, optimize=True)
    std = max(float(log_field[::4, ::4, ::4].std()), 1e-6)  # a subsample is plenty for a smooth field
    return np.exp(log_field * np.float32(strength / std))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: np.ndarray) -> np.ndarray:
    """Unit-variance noise that is smooth over ``cell`` voxels: coarse normals, linear upsampling."""
    coarse_shape = np.ceil(np.asarray(shape) / cell).astype(int) + 3
    coarse = rng.standard_normal(tuple(coarse_shape)).astype(np.float32)
    factor = (coarse_shape - 3) / np.asarray(shape, float)
    fine = ndimage.affine_transform(coarse, factor, offset=1.0, output_shape=tuple(shape), order=1)
    return (fine / max(float(fine.std()), 1e-6)).astype(np.float32)


def _tumour(rng: np.random.Generator, tpl: Template) -> tuple[np.ndarray, tuple[slice, ...], dict]:
    """Label map with nested compartments inside the brain, the box holding them, and parameters."""
    sp = tpl.spacing
    rim = max(2.5, 1.2 * sp.max())
    r_nec = rng.uniform(max(3.0, sp.max()), 12.0)
    r_tc = r_nec + rim + rng.uniform(0.0, 8.0)
    r_wt = r_tc * rng.uniform(1.5, 2.2)
    candidates = np.argwhere((tpl.depth_mm >= 1.15 * r_tc + rim) & (tpl.tissue >= 2))
    if len(candidates) == 0:  # a brain too thin for this core: use its deepest voxels
        candidates = np.argwhere(tpl.depth_mm == tpl.depth_mm.max())
    centre = candidates[rng.integers(len(candidates))]
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    axes = rng.uniform(0.8, 1.25, 3)
    half = np.ceil(1.6 * r_wt * axes.max() / sp).astype(int)
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, tpl.t1.shape)
    rel = np.stack(np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, sp)],
                               indexing="ij"), axis=-1).astype(np.float32)
    rel = (rel @ rotation.astype(np.float32)) / axes.astype(np.float32)
    radius = np.linalg.norm(rel, axis=-1)
    direction = rel / np.maximum(radius[..., None], 1e-6)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    brain, tissue = tpl.brain[box], tpl.tissue[box]
    # Edema is lobulated and spares CSF; the core is rounder; each compartment nests in its parent.
    tc = (radius < r_tc * (1 + 0.12 * _lobes(rng, direction, 6, (2, 5)))) & brain
    edema = (radius < r_wt * (1 + 0.25 * _lobes(rng, direction, 8, (2, 7)))) & brain & (tissue != 1)
    nec = (radius < r_nec * (1 + 0.10 * _lobes(rng, direction, 4, (2, 4)))) & tc
    label = np.zeros(tpl.t1.shape, np.uint8)
    label[box] = np.select([nec, tc, edema], [NEC, ENH, EDEMA], 0)
    params = {"centre_voxel": centre.tolist(), "radius_mm": {"WT": round(r_wt, 2), "TC": round(r_tc, 2),
                                                              "necrosis": round(r_nec, 2)}}
    return label, box, params


def _contrast(channel: str, tpl: Template, tumour: dict[int, np.ndarray], pad: tuple[slice, ...],
              rng: np.random.Generator) -> np.ndarray:
    """Noise-free relative intensities of one contrast (WM of T1 ≈ 1, background 0).

    ``tumour`` maps each label to its blending weight times texture inside the box ``pad``.
    """
    tissue = np.asarray(TISSUE[channel]) * rng.uniform(0.95, 1.05, 3)
    image = np.zeros(tpl.t1.shape, np.float32)
    image[tpl.brain] = np.interp(tpl.t1[tpl.brain], tpl.anchors, tissue)
    sub = image[pad]
    for value, code in zip(TUMOUR[channel], (EDEMA, NEC, ENH)):
        weight, texture = tumour[code]
        sub += weight * (np.float32(value) * texture - sub)
    image[pad] = sub * tpl.brain[pad]
    return image


def _tumour_weights(rng: np.random.Generator, tpl: Template, label: np.ndarray,
                    box: tuple[slice, ...]) -> tuple[tuple[slice, ...], dict]:
    """Partial-volume weights (a ~1 mm blur of each compartment) and a shared texture field."""
    pad = tuple(slice(max(b.start - 3, 0), min(b.stop + 3, n)) for b, n in zip(box, label.shape))
    sub = label[pad]
    texture = 1 + 0.1 * smooth_noise(rng, sub.shape, np.maximum(1.0, 5.0 / tpl.spacing))
    sigma = np.maximum(0.5, 1.0 / tpl.spacing)
    weights = {code: (ndimage.gaussian_filter((sub == code).astype(np.float32), sigma), texture)
               for code in (EDEMA, NEC, ENH)}
    return pad, weights


def _acquire(clean: np.ndarray, brain: np.ndarray, bias: np.ndarray, gain: float, noise: float,
             rng: np.random.Generator) -> np.ndarray:
    """Bias, scale and Rician noise on the brain voxels → int16 with an exact zero background."""
    signal = clean[brain] * bias[brain] * np.float32(gain)
    sigma = np.float32(noise * gain)
    magnitude = np.hypot(signal + sigma * rng.standard_normal(signal.shape, np.float32),
                         sigma * rng.standard_normal(signal.shape, np.float32))
    out = np.zeros(clean.shape, np.int16)
    # Skull-stripped scans have an exact zero background, which z-scoring over nonzero relies on.
    out[brain] = np.clip(np.rint(magnitude), 1, 32767)
    return out


def make_case(index: int, seed: int, shape: tuple[int, int, int] = BRATS_SHAPE) -> PhantomCase:
    """Case number ``index`` (0-based) of the phantom dataset drawn with ``seed``."""
    rng = np.random.default_rng((seed, index))
    tpl = load_template(tuple(int(n) for n in shape))
    site_name = list(SITES)[index % len(SITES)]
    site = SITES[site_name]
    label, box, params = _tumour(rng, tpl)
    pad, tumour = _tumour_weights(rng, tpl, label, box)
    scale = site.scale * rng.uniform(0.9, 1.1)
    images = {}
    for channel in CHANNELS:
        clean = _contrast(channel, tpl, tumour, pad, rng)
        bias = bias_field(rng, tpl.t1.shape, site.bias)
        images[channel] = _acquire(clean, tpl.brain, bias, scale * GAIN[channel], site.noise, rng)
    case_id = f"Phantom_{site_name}_{index + 1:03d}"
    return PhantomCase(case_id, site_name, images, label, tpl.tissue, tpl.affine, params)


def _readable(path: Path, directory: bool = False) -> None:
    """Give a temp file or folder (created private) the permissions of an ordinary one."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if directory else 0o666) & ~umask)


def _header() -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "sec")
    header["qform_code"] = header["sform_code"] = 1
    return header


def write_case(case: PhantomCase, out: Path) -> Path:
    """Write one case as ``out/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, all or nothing.

    The files go to a hidden ``.part-`` folder that is renamed into place when complete, so a
    killed run never leaves a case with missing files where ``discover`` would find it.
    """
    out.mkdir(parents=True, exist_ok=True)
    final = out / case.case_id
    tmp = Path(tempfile.mkdtemp(prefix=f".part-{case.case_id}.", dir=out))
    _readable(tmp, directory=True)
    try:
        header = _header()
        for channel, array in case.images.items():
            write_image(tmp / f"{case.case_id}_{channel}.nii.gz", array, case.affine, header)
        write_image(tmp / f"{case.case_id}_seg.nii.gz", case.label, case.affine, header)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".part-old-{case.case_id}.", dir=out))
            os.replace(final, old / case.case_id)
            shutil.rmtree(old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_dataset(out: Path | str, cases: int, seed: int, shape: tuple[int, int, int] = BRATS_SHAPE) -> list[Path]:
    """Write ``cases`` phantom cases and ``phantom.json`` (seed, shape, per-case tumour) to ``out``."""
    out = Path(out)
    shape = tuple(int(n) for n in shape)
    if cases < 1:
        raise InputError(f"--cases must be at least 1; got {cases}")
    if len(shape) != 3 or not all(16 <= n <= 512 for n in shape):
        raise InputError(f"--shape must be three sizes between 16 and 512 voxels; got {list(shape)}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    written, record = [], []
    for index in tqdm(range(cases), desc="phantom", unit="case"):
        case = make_case(index, seed, shape)
        written.append(write_case(case, out))
        record.append({"case": case.case_id, "site": case.site, **case.tumour})
    meta = {"generator": "glioseg phantom", "seed": seed, "shape": list(shape),
            "spacing_mm": [round(float(s), 6) for s in load_template(shape).spacing], "cases": record}
    with atomic_path(out / "phantom.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        _readable(tmp)
    return written


MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}   # MSD Task01's dataset.json


def write_msd_dataset(out: Path | str, cases: int, seed: int, shape: tuple[int, int, int] = BRATS_SHAPE) -> Path:
    """The phantom cases in the MSD Task01 layout (another dataset's conventions, for tests of several
    datasets used together): ``imagesTr/BRATS_<n>.nii.gz`` 4-D (FLAIR, T1w, T1gd, T2w), ``labelsTr/``
    with MSD labels (1 edema, 2 non-enhancing, 3 enhancing: the BraTS labels converted through the
    regions) and ``dataset.json``; the case ids carry no site."""
    out = Path(out)
    if cases < 1:
        raise InputError(f"--cases must be at least 1; got {cases}")
    training = []
    for index in tqdm(range(cases), desc="phantom msd", unit="case"):
        case = make_case(index, seed, tuple(int(n) for n in shape))
        case_id = f"BRATS_{index + 1:03d}"
        stack = np.stack([case.images[c] for c in ("flair", "t1", "t1ce", "t2")], axis=-1)
        label = convert_labels(case.label, get_scheme("brats"), get_scheme("msd"))
        for folder, array in (("imagesTr", stack), ("labelsTr", label)):
            (out / folder).mkdir(parents=True, exist_ok=True)
            write_image(out / folder / f"{case_id}.nii.gz", array, case.affine, _header())
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {"name": "glioseg phantom (MSD layout)", "modality": MSD_MODALITY,
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumour", "3": "enhancing tumour"},
            "numTraining": cases, "training": training}
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        _readable(tmp)
    return out
