"""Label names and colours as 3D Slicer and ITK-SNAP read them, beside the label maps glioseg writes.

* ``<case>.seg.nrrd``: a Slicer segmentation (written with ``slicerio``, Slicer's own Python
  reader/writer): the label map's voxels with one named, coloured segment per label value;
  Slicer opens it by drag and drop as named segments.
* ``<scheme>-labels.ctbl``: a Slicer colour table (``value name R G B A`` per line); load it,
  then choose it as the colour node of a ``<case>.nii.gz`` label map in the Volumes module.
* ``<scheme>-labels.itksnap.txt``: an ITK-SNAP label description file (Segmentation → Import
  Label Descriptions, or ``itksnap -g IMAGE -s <case>.nii.gz -l <scheme>-labels.itksnap.txt``).

Names and colours are those of the report (:func:`glioseg.evaluation.figures.label_colours`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from glioseg.data.io import DataError
from glioseg.data.labels import LabelScheme
from glioseg.evaluation.figures import label_colours
from glioseg.files import file_sha256, write_text_atomic

SEG_NRRD = "{}.seg.nrrd"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _labels(scheme: LabelScheme) -> list[tuple[int, str, tuple[int, int, int]]]:
    return [(value, text.split(": ", 1)[1], tuple(round(255 * c) for c in rgb))
            for value, (text, rgb) in label_colours(scheme).items()]


def slicer_colour_table(scheme: LabelScheme) -> str:
    """A Slicer colour table (.ctbl): background and each label of ``scheme``, named and coloured."""
    lines = [f"# Color table file: glioseg {scheme.name} labels", f"# {len(scheme.labels) + 1} values",
             "0 background 0 0 0 0"]
    # Slicer splits a line on spaces: names use underscores.
    lines += [f"{value} {name.replace(' / ', '_or_').replace(' ', '_')} {r} {g} {b} 255"
              for value, name, (r, g, b) in _labels(scheme)]
    return "\n".join(lines) + "\n"


def itksnap_label_file(scheme: LabelScheme) -> str:
    """An ITK-SNAP label description file for ``scheme``."""
    lines = ["################################################", "# ITK-SnAP Label Description File",
             f"# glioseg {scheme.name} labels", "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "################################################",
             '    0     0    0    0        0  0  0    "Clear Label"']
    lines += [f'{value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{name}"' for value, name, (r, g, b) in _labels(scheme)]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, scheme: LabelScheme) -> list[Path]:
    """``<scheme>-labels.ctbl`` and ``<scheme>-labels.itksnap.txt`` in ``folder``, written atomically."""
    folder = Path(folder)
    return [write_text_atomic(folder / f"{scheme.name}-labels.ctbl", slicer_colour_table(scheme)),
            write_text_atomic(folder / f"{scheme.name}-labels.itksnap.txt", itksnap_label_file(scheme))]


def _extent(mask: np.ndarray) -> list[int]:
    if not mask.any():
        return [0, -1, 0, -1, 0, -1]  # Slicer's empty extent
    hits = np.argwhere(mask)
    return [int(v) for pair in zip(hits.min(axis=0), hits.max(axis=0)) for v in pair]


def segmentation(label: np.ndarray, affine: np.ndarray, scheme: LabelScheme) -> dict:
    """The slicerio segmentation of a label map: its voxels as stored, one segment per label value."""
    voxels = np.ascontiguousarray(label, dtype=np.uint8)
    segments = [{"id": f"Segment_{value}", "name": name, "color": [round(c / 255, 6) for c in rgb],
                 "labelValue": value, "layer": 0, "extent": _extent(voxels == value)}
                for value, name, rgb in _labels(scheme)]
    return {"voxels": voxels, "ijkToLPS": RAS_TO_LPS @ np.asarray(affine, dtype=np.float64),
            "segments": segments, "masterRepresentation": "Binary labelmap",
            "containedRepresentationNames": ["Binary labelmap"]}


def write_seg_nrrd(path: Path, label: np.ndarray, affine: np.ndarray, scheme: LabelScheme) -> str:
    """Write ``label`` (in the grid of ``affine``, RAS mm) as a Slicer ``.seg.nrrd``, read it back and
    compare voxels, geometry and segments (a difference removes it: DataError); returns its SHA-256."""
    import slicerio  # imported here: only writing predictions needs it

    meant = segmentation(label, affine, scheme)
    slicerio.write_segmentation(str(path), meant, compression_level=6)
    try:
        back = slicerio.read_segmentation(str(path))
        same = (np.array_equal(back["voxels"], meant["voxels"]) and np.allclose(back["ijkToLPS"], meant["ijkToLPS"])
                and [(s["labelValue"], s["name"]) for s in back["segments"]]
                == [(s["labelValue"], s["name"]) for s in meant["segments"]])
    except (OSError, ValueError, KeyError) as exc:
        same, problem = False, str(exc)
    else:
        problem = "voxels, geometry or segments differ after reading it back"
    if not same:
        Path(path).unlink(missing_ok=True)
        raise DataError(path, f"Slicer segmentation not written correctly: {problem}")
    return file_sha256(path)
