"""The report's figures as PNG bytes: label overlays on MRI slices, and training curves.

Orientation is never left to chance: volumes are reoriented to RAS (:func:`to_ras`) before
slicing, so LPS BraTS files and RAS MSD files show up the same way. Axial slices are shown
anterior up, coronal and sagittal superior up; axial and coronal slices in radiological
convention by default (the patient's right on the image's left), sagittal slices anterior left.
Every panel carries its direction letters. Figures use matplotlib's object API (no pyplot state).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from glioseg.data.labels import LabelScheme
from glioseg.errors import InputError
from glioseg.run_io import EVENTS, RunFiles

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
CONVENTIONS: tuple[str, ...] = ("radiological", "neurological")
# One colour per label meaning, the same in every scheme.
COLOURS = {"edema": (0.15, 0.85, 0.15), "core": (0.95, 0.1, 0.1), "enhancing": (1.0, 0.9, 0.0),
           "other core": (1.0, 0.45, 0.0), "no region": (0.2, 0.55, 1.0)}
CONVENTION_NOTE = {
    "radiological": "Radiological convention: the patient's right is on the image's left (axial, coronal). "
                    "Axial: anterior up. Coronal, sagittal: superior up. Sagittal: anterior left. "
                    "Slice positions in scanner RAS mm.",
    "neurological": "Neurological convention: the patient's right is on the image's right (axial, coronal). "
                    "Axial: anterior up. Coronal, sagittal: superior up. Sagittal: anterior left. "
                    "Slice positions in scanner RAS mm.",
}
PRECISION_ORDER = ("fp16", "bf16", "fp32")  # fastest to safest: the y order of the timeline


def label_colours(scheme: LabelScheme) -> dict[int, tuple[str, tuple[float, float, float]]]:
    """Label value → (legend text, RGB) by the label's meaning, not its number."""
    out = {}
    for value, meaning in sorted(scheme.labels.items()):
        if value == scheme.edema:
            key = "edema"
        elif value == scheme.enhancing:
            key = "enhancing"
        elif value == scheme.core:
            key = "core"
        elif value in scheme.regions["TC"]:
            key = "other core"
        else:
            key = "no region"
        out[value] = (f"{value}: {meaning}", COLOURS[key])
    return out


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient the first three axes to RAS by flips and transposes only (no resampling)."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt("RAS"))
    ras = nib.orientations.apply_orientation(array, transform)
    return ras, affine @ nib.orientations.inv_ornt_aff(transform, array.shape[:3])


def display_slice(volume_ras: np.ndarray, plane: str, index: int, convention: str = "radiological") -> np.ndarray:
    """A 2-D view of a RAS volume as it appears on screen: row 0 at the top, column 0 on the left."""
    if convention not in CONVENTIONS:
        raise InputError(f"convention must be one of {CONVENTIONS}; got {convention!r}")
    if plane == "axial":
        view = volume_ras[:, :, index].T[::-1]  # rows: anterior → posterior; columns: left → right
    elif plane == "coronal":
        view = volume_ras[:, index, :].T[::-1]  # rows: superior → inferior
    elif plane == "sagittal":
        return volume_ras[index, :, :].T[::-1, ::-1]  # columns: anterior → posterior
    else:
        raise ValueError(f"plane must be one of {PLANES}; got {plane!r}")
    return view[:, ::-1] if convention == "radiological" else view


def _letters(plane: str, convention: str) -> tuple[str, str, str, str]:
    """(top, bottom, left, right) direction letters of a view."""
    if plane == "sagittal":
        return "S", "I", "A", "P"
    left, right = ("R", "L") if convention == "radiological" else ("L", "R")
    return ("A", "P", left, right) if plane == "axial" else ("S", "I", left, right)


def _aspect(plane: str, spacing) -> float:
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Display window: the 1st to 99.5th percentile of the non-zero (brain) voxels."""
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def blend(image2d: np.ndarray, label2d: np.ndarray | None, scheme: LabelScheme,
          window: tuple[float, float], alpha: float = 0.5) -> np.ndarray:
    """Grey image with the label colours blended in: uint8 RGB (H, W, 3)."""
    lo, hi = window
    grey = np.clip((np.asarray(image2d, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label2d is not None:
        for value, (_, colour) in label_colours(scheme).items():
            mask = label2d == value
            rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return np.round(rgb * 255).astype(np.uint8)


def slice_rgb(image_ras: np.ndarray, label_ras: np.ndarray | None, scheme: LabelScheme, plane: str,
              index: int, convention: str = "radiological", alpha: float = 0.5) -> np.ndarray:
    """One overlay panel exactly as the figure draws it (before any scaling)."""
    label = None if label_ras is None else display_slice(label_ras, plane, index, convention)
    return blend(display_slice(image_ras, plane, index, convention), label, scheme,
                 intensity_window(image_ras), alpha)


def tumour_centre(label_ras: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the slice with the most tumour voxels; the volume's centre when there is none."""
    mask = np.asarray(label_ras) > 0
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3))


def crop_box(volumes, margin: int = 4) -> tuple[slice, ...]:
    """Bounding box of the non-zero voxels of all ``volumes`` plus ``margin``."""
    union = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        union |= np.asarray(v) != 0
    if not union.any():
        return tuple(slice(0, s) for s in union.shape)
    box = []
    for axis in range(3):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, union.shape[axis])))
    return tuple(box)


def _as_mapping(value, name: str) -> dict:
    return dict(value) if isinstance(value, Mapping) else {name: value}


def _draw_panel(ax, rgb, plane, convention, aspect) -> None:
    ax.imshow(rgb, aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    style = dict(color="white", fontsize=8, fontweight="bold", transform=ax.transAxes)
    top, bottom, left, right = _letters(plane, convention)
    ax.text(0.5, 0.985, top, ha="center", va="top", **style)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)
    ax.text(0.015, 0.5, left, ha="left", va="center", **style)
    ax.text(0.985, 0.5, right, ha="right", va="center", **style)


def _world(affine: np.ndarray, voxel) -> np.ndarray:
    return (np.asarray(affine, dtype=float) @ np.r_[np.asarray(voxel, dtype=float), 1.0])[:3]


def overlay_figure(image_ras, label_ras, scheme: LabelScheme, *, affine: np.ndarray | None = None,
                   centre: tuple[int, int, int] | None = None, convention: str = "radiological",
                   planes: tuple[str, ...] = PLANES, crop: bool = True, title: str | None = None,
                   alpha: float = 0.5, panel_inches: float = 2.25, dpi: int = 100) -> bytes:
    """PNG: one row per image, one column per (plane, label map), through the tumour.

    ``image_ras`` / ``label_ras``: a RAS volume (X, Y, Z) or a mapping of display name → volume
    (e.g. ``{"FLAIR": ..., "T1ce": ...}`` and ``{"reference": ..., "prediction": ...}``), all on one
    grid whose RAS ``affine`` (default identity) gives the spacing and the slices' positions in mm.
    ``centre`` (voxel indices) defaults to :func:`tumour_centre` of the first label map with
    tumour in it, so every panel of a plane shows the same slice.
    """
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    spacing = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    images, labels = _as_mapping(image_ras, "image"), _as_mapping(label_ras, "label")
    box = crop_box([*images.values(), *labels.values()]) if crop else tuple(slice(0, n) for n in
                                                                           np.shape(next(iter(images.values()))))
    offset = np.array([b.start for b in box])
    if centre is None:
        found = [lab for lab in labels.values() if np.any(lab > 0)]
        centre = offset + tumour_centre(np.asarray(found[0] if found else next(iter(labels.values())))[box])
    world = _world(affine, centre)
    images = {k: np.asarray(v)[box] for k, v in images.items()}
    labels = {k: np.asarray(v)[box] for k, v in labels.items()}
    columns = [(plane, name) for plane in planes for name in labels]
    fig = Figure(figsize=(panel_inches * len(columns) + 0.3, panel_inches * len(images) + 1.4))
    axes = fig.subplots(len(images), len(columns), squeeze=False)
    axis_of = {"sagittal": 0, "coronal": 1, "axial": 2}
    for r, (image_name, image) in enumerate(images.items()):
        window = intensity_window(image)
        for c, (plane, label_name) in enumerate(columns):
            axis = axis_of[plane]
            index = int(centre[axis] - offset[axis])
            rgb = blend(display_slice(image, plane, index, convention),
                        display_slice(labels[label_name], plane, index, convention), scheme, window, alpha)
            _draw_panel(axes[r, c], rgb, plane, convention, _aspect(plane, spacing))
            if r == 0:
                axes[r, c].set_title(f"{label_name}\n{plane}, {'xyz'[axis]} = {world[axis]:+.1f} mm", fontsize=9)
        axes[r, 0].set_ylabel(image_name, fontsize=10)
    handles = [Patch(color=colour, label=text) for text, colour in label_colours(scheme).values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    heading = CONVENTION_NOTE[convention] if title is None else f"{title}\n{CONVENTION_NOTE[convention]}"
    fig.text(0.01, 1 - 0.08 / fig.get_figheight(), heading, fontsize=9, va="top", ha="left", wrap=True)
    fig.subplots_adjust(left=0.3 / fig.get_figwidth(), right=0.995, top=1 - 0.95 / fig.get_figheight(),
                        bottom=0.4 / fig.get_figheight(), wspace=0.03, hspace=0.03)
    return to_png(fig, dpi)


def to_png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _levels(names) -> list[str]:
    seen = [n for n in PRECISION_ORDER if n in names]
    return seen + sorted(set(names) - set(seen))


def _precision_timeline(ax, epochs: list[dict], events: list[dict]) -> None:
    if events:
        steps = [float(e.get("step", i)) for i, e in enumerate(events)]
        states = [str(events[0].get("from", events[0].get("to")))] + [str(e.get("to")) for e in events]
        levels = _levels(states)
        y = [levels.index(s) for s in states]
        # the line runs on to the run's last step, not just to its last decision
        last = max([steps[-1]] + [e["step"] for e in epochs if math.isfinite(e.get("step", math.nan))])
        ax.step([0.0] + steps + [last], y + [y[-1]], where="post", color="0.3")
        switches = 0
        for step, before, after in zip(steps, y, y[1:]):
            if after == before:   # a decision that kept the level (the probe, a refused promotion)
                continue
            switches += 1
            fallback = after > before  # towards fp32 = safer
            ax.plot(step, after, "v" if fallback else "^", color="tab:red" if fallback else "tab:green",
                    markersize=7)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"precision timeline ({switches} switches, {len(events)} decisions; "
                     "red: fallback, green: faster)", fontsize=10)
    else:
        names = [e["precision"] for e in epochs if e["precision"]]
        levels = _levels(names)
        if names:
            ax.step([e["epoch"] for e in epochs if e["precision"]], [levels.index(n) for n in names],
                    where="post", color="0.3", marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(f"precision per epoch (no {EVENTS})", fontsize=10)
    ax.set_yticks(range(len(levels)), levels)
    ax.set_ylim(-0.5, max(len(levels) - 0.5, 0.5))


def training_curves(run_dir: Path, dpi: int = 100) -> bytes:
    """PNG: training loss, validation Dice (WT/TC/ET) per epoch, and the precision timeline."""
    files = RunFiles(run_dir)
    epochs, events = files.read_metrics(), files.read_events()
    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(9, 8.4))
    loss_ax, dice_ax, prec_ax = fig.subplots(3, 1)
    loss_ax.plot(x, [e["train_loss"] for e in epochs], color="tab:blue", marker=".")
    loss_ax.set_title("training loss", fontsize=10)
    loss_ax.set_xlabel("epoch")
    for region, colour in (("wt", "tab:green"), ("tc", "tab:red"), ("et", "goldenrod")):
        values = [e[f"val_dice_{region}"] for e in epochs]
        keep = [(xi, v) for xi, v in zip(x, values) if math.isfinite(v)]
        if keep:
            dice_ax.plot(*zip(*keep), color=colour, marker="o", markersize=3, label=region.upper())
    dice_ax.set_ylim(0, 1)
    dice_ax.set_title("validation Dice", fontsize=10)
    dice_ax.set_xlabel("epoch")
    if dice_ax.lines:
        dice_ax.legend(loc="lower right", fontsize=8)
    _precision_timeline(prec_ax, epochs, events)
    for ax in (loss_ax, dice_ax, prec_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig, dpi)
