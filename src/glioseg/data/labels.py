"""Label conventions of each dataset format and the WT / TC / ET regions.

Every format numbers its labels differently (see ``docs/labels.md``); mixing them up is a
known bug in public pipelines. glioseg keeps one explicit scheme per format and speaks of
regions everywhere else. Regions are nested: ET ⊆ TC ⊆ WT.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glioseg.errors import InputError

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


@dataclass(frozen=True)
class LabelScheme:
    """One format's label table.

    ``labels`` maps each allowed non-zero value to its meaning; ``regions`` maps each region
    to the label values it contains. ``edema``, ``core`` and ``enhancing`` are the labels a
    region map is turned back into (WT−TC → edema, TC−ET → core, ET → enhancing).
    """

    name: str
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]
    edema: int
    core: int
    enhancing: int

    @property
    def allowed(self) -> frozenset[int]:
        """Values a label file of this format may contain (background included)."""
        return frozenset({0, *self.labels})

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "labels": {str(k): v for k, v in self.labels.items()},
            "regions": {k: list(v) for k, v in self.regions.items()},
            "edema": self.edema,
            "core": self.core,
            "enhancing": self.enhancing,
        }


SCHEMES: dict[str, LabelScheme] = {
    "msd": LabelScheme(
        name="msd",
        labels={1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
        edema=1, core=2, enhancing=3,
    ),
    "brats": LabelScheme(
        name="brats",
        labels={1: "necrotic / non-enhancing core", 2: "edema", 4: "enhancing tumour"},
        regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
        edema=2, core=1, enhancing=4,
    ),
    "brats2023": LabelScheme(
        name="brats2023",
        labels={1: "necrotic core", 2: "edema (SNFH)", 3: "enhancing tumour", 4: "resection cavity"},
        regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
        edema=2, core=1, enhancing=3,
    ),
    "brats2013": LabelScheme(
        name="brats2013",
        labels={1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"},
        regions={"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)},
        edema=2, core=3, enhancing=4,
    ),
}


def get_scheme(name: str) -> LabelScheme:
    """The scheme called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise InputError(f"unknown label scheme {name!r}; known: {', '.join(sorted(SCHEMES))}") from None


def labels_to_regions(label: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Label map (X, Y, Z) of integers → boolean regions (3, X, Y, Z) ordered WT, TC, ET."""
    return np.stack([np.isin(label, scheme.regions[r]) for r in REGIONS])


def regions_to_labels(regions: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Boolean or {0,1} regions (3, X, Y, Z) ordered WT, TC, ET → uint8 label map (X, Y, Z).

    Nesting is enforced the way the BraTS recipes do it: ET wins, then TC, then WT, so a voxel
    predicted ET but not WT is still enhancing tumour.
    """
    if regions.ndim < 2 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"regions must have shape (3, ...) ordered WT, TC, ET; got {regions.shape}")
    wt, tc, et = (np.asarray(r, dtype=bool) for r in regions)
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = scheme.edema
    out[tc] = scheme.core
    out[et] = scheme.enhancing
    return out


def convert_labels(label: np.ndarray, source: LabelScheme, target: LabelScheme) -> np.ndarray:
    """A label map of ``source``'s values in ``target``'s, through the WT / TC / ET regions.

    Exact for every value that lies in a region (MSD 1 edema, 2 non-enhancing, 3 enhancing → BraTS
    2, 1, 4); a value in no region (a BraTS 2024 resection cavity) becomes background, as no region
    model or score ever sees it. The same scheme returns ``label`` itself.
    """
    if source.name == target.name:
        return label
    return regions_to_labels(labels_to_regions(label, source), target)


def implied_convention_problem(values, scheme: LabelScheme) -> str | None:
    """Why label ``values`` contradict the convention that a dataset's *file names* imply, or None.

    BraTS 2023+ names (``-t2f``, ``-seg``) mean 3 = enhancing tumour and, from 2024, 4 = resection
    cavity (in no region); a map with 4 and no 3 almost surely uses the 2017-2021 values (4 =
    enhancing), and read as 2023 its enhancing tumour would silently become a cavity (ET 0 mL).
    Only for a convention implied by names: a manifest that states its scheme is taken at its word.
    """
    present = {int(v) for v in values}
    if scheme.name != "brats2023" or 4 not in present or 3 in present:
        return None
    return ("holds label 4 and no label 3, the BraTS 2017-2021 convention (4 = enhancing tumour), but its "
            "BraTS 2023 file names (-t2f, -t1c, -seg) imply 3 = enhancing and 4 = resection cavity, so its "
            "enhancing tumour would be lost; state the convention in a JSON manifest beside the data: "
            '{"scheme": "brats", "cases": [{"case": ..., "flair": ..., "t1": ..., "t1ce": ..., "t2": ..., '
            '"label": ...}]} for 2017-2021 values, or "scheme": "brats2023" if 4 is a resection cavity')


def region_volumes_ml(label: np.ndarray, scheme: LabelScheme, spacing_mm: tuple[float, ...]) -> dict[str, float]:
    """Volume in millilitres of each region of a label map with voxel ``spacing_mm``."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    counts = labels_to_regions(label, scheme).reshape(len(REGIONS), -1).sum(axis=1)
    return {r: float(c) * voxel_ml for r, c in zip(REGIONS, counts)}


def class_values(scheme: LabelScheme) -> tuple[int, ...]:
    """Label values in class-index order for softmax models: background first, then ascending."""
    return (0, *sorted(scheme.labels))


def labels_to_classes(label: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Label map → class indices 0..K-1 (BraTS 0,1,2,4 → 0,1,2,3) as int64."""
    lut = np.zeros(max(class_values(scheme)) + 1, dtype=np.int64)
    for index, value in enumerate(class_values(scheme)):
        lut[value] = index
    return lut[label]


def classes_to_labels(classes: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Class indices 0..K-1 → the scheme's label values as uint8."""
    return np.asarray(class_values(scheme), dtype=np.uint8)[classes]


def classes_to_regions(classes: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Class indices → boolean regions (3, ...) WT, TC, ET."""
    return labels_to_regions(classes_to_labels(classes, scheme), scheme)
