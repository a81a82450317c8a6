"""Dataset layouts: find the cases of a dataset and name their channels.

Channels are named, never ordered by glob: every format maps its files onto glioseg's
canonical channel names :data:`CHANNELS`, and that order is the tensor's channel order.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from glioseg.data.io import DataError
from glioseg.data.labels import LabelScheme, get_scheme

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
FORMAT_SCHEME = {"msd": "msd", "brats": "brats", "brats2023": "brats2023", "manifest": "brats"}
BRATS_SUFFIX = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
MSD_MODALITIES = {"flair": "flair", "t1w": "t1", "t1gd": "t1ce", "t2w": "t2"}
# BraTS 2017/2018 names carry the institution; glioseg's phantoms (Phantom_SITEA_001) mimic that.
_BRATS18_SITE = re.compile(r"^(?:Brats1[78]|Phantom)_(?P<site>[A-Za-z0-9]+)_")


@dataclass(frozen=True)
class Case:
    """One case: its channel files by canonical name, its label file and its site.

    ``volume_index`` is set for 4-D files holding several channels (MSD): channel name →
    index along the file's last axis; then every entry of ``images`` is the same file.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    site: str | None = None
    volume_index: dict[str, int] | None = None

    def files(self) -> list[Path]:
        """Every distinct file of the case, images first."""
        out = list(dict.fromkeys(self.images.values()))
        return out + ([self.label] if self.label is not None else [])


@dataclass(frozen=True)
class Dataset:
    root: Path
    format: str
    scheme: LabelScheme
    cases: tuple[Case, ...]
    channels: tuple[str, ...] = CHANNELS
    ignored: tuple[Path, ...] = field(default=())


def site_from_case_id(case_id: str) -> str | None:
    """The institution in a BraTS 2017/2018 case name (``Brats18_TCIA01_201_1`` → ``TCIA01``),
    or the synthetic site of a glioseg phantom (``Phantom_SITEA_001`` → ``SITEA``)."""
    match = _BRATS18_SITE.match(case_id)
    return match.group("site") if match else None


def inside_root(root: Path, candidate: Path | str, source: Path) -> Path:
    """Resolve ``candidate`` relative to ``root``; it must stay inside ``root`` (symlinks too)."""
    text = str(candidate)
    if "$" in text or text.startswith("~"):
        raise DataError(source, f"path {text!r} uses a variable or '~'; paths must be relative to {root}")
    path = Path(text)
    if path.is_absolute():
        raise DataError(source, f"path {text!r} is absolute; paths must be relative to {root}")
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(source, f"path {text!r} resolves to {resolved}, outside the dataset root {root}")
    return resolved


def _visible(paths) -> tuple[list[Path], list[Path]]:
    """Split into visible entries and dotfiles (``._*`` AppleDouble files from MSD tarballs)."""
    shown, hidden = [], []
    for p in sorted(paths):
        (hidden if p.name.startswith(".") else shown).append(p)
    return shown, hidden


def detect_format(root: Path) -> str:
    """Guess the layout of ``root``; a ``ValueError`` says what was looked for."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in (".csv", ".json"):
        return "manifest"
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    for sub in _visible(p for p in root.iterdir() if p.is_dir())[0] if root.is_dir() else []:
        if (sub / f"{sub.name}_flair.nii.gz").exists() or (sub / f"{sub.name}_flair.nii").exists():
            return "brats"
        if (sub / f"{sub.name}-t2f.nii.gz").exists() or (sub / f"{sub.name}-t2f.nii").exists():
            return "brats2023"
    raise ValueError(
        f"{root}: no known dataset layout (looked for MSD dataset.json + imagesTr/, BraTS "
        f"<case>/<case>_flair.nii.gz, BraTS 2023 <case>/<case>-t2f.nii.gz, or a .csv/.json manifest)"
    )


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return None


def _discover_brats(root: Path, suffixes: dict[str, str], sep: str) -> tuple[list[Case], list[Path]]:
    folders, hidden = _visible(p for p in root.iterdir() if p.is_dir())
    cases = []
    for folder in folders:
        images = {}
        for channel, suffix in suffixes.items():
            found = _find(folder, f"{folder.name}{sep}{suffix}")
            if found is None:
                raise DataError(folder, f"missing the {channel} image {folder.name}{sep}{suffix}.nii.gz")
            images[channel] = inside_root(root, found.relative_to(root), folder)
        label = _find(folder, f"{folder.name}{sep}seg")
        label = inside_root(root, label.relative_to(root), folder) if label else None
        cases.append(Case(folder.name, images, label, site_from_case_id(folder.name)))
    return cases, hidden


def _discover_msd(root: Path) -> list[Case]:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(meta_path, f"cannot read dataset.json: {exc}") from exc
    modality = meta.get("modality", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    index = {}
    for key, name in modality.items():
        canonical = MSD_MODALITIES.get(str(name).lower())
        if canonical is None:
            raise DataError(meta_path, f"unknown modality {name!r}; expected FLAIR, T1w, T1gd, T2w")
        index[canonical] = int(key)
    if set(index) != set(CHANNELS):
        raise DataError(meta_path, f"modalities {sorted(index)} do not cover {list(CHANNELS)}")
    cases = []
    for entry in meta.get("training", []):
        image = inside_root(root, entry["image"], meta_path)
        label = inside_root(root, entry["label"], meta_path) if entry.get("label") else None
        case_id = image.name.split(".")[0]
        cases.append(Case(case_id, {c: image for c in CHANNELS}, label, None, index))
    return cases


def _discover_manifest(path: Path) -> list[Case]:
    """A CSV (columns case, flair, t1, t1ce, t2, label, site) or JSON list of such objects."""
    root = path.parent
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
        else:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, json.JSONDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read manifest: {exc}") from exc
    cases = []
    for n, row in enumerate(rows):
        missing = [c for c in ("case", *CHANNELS) if not row.get(c)]
        if missing:
            raise DataError(path, f"row {n + 1} lacks {', '.join(missing)}")
        images = {c: inside_root(root, row[c], path) for c in CHANNELS}
        label = inside_root(root, row["label"], path) if row.get("label") else None
        site = row.get("site") or site_from_case_id(row["case"])
        cases.append(Case(row["case"], images, label, site))
    return cases


def discover(root: Path | str, format: str = "auto") -> Dataset:
    """Find every case of the dataset at ``root`` (a folder, or a manifest file)."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root}: no such file or folder")
    fmt = detect_format(root) if format in (None, "auto") else format
    hidden: list[Path] = []
    if fmt == "brats":
        cases, hidden = _discover_brats(root, BRATS_SUFFIX, "_")
    elif fmt == "brats2023":
        cases, hidden = _discover_brats(root, BRATS2023_SUFFIX, "-")
    elif fmt == "msd":
        cases = _discover_msd(root)
    elif fmt == "manifest":
        cases = _discover_manifest(root)
    else:
        raise ValueError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMAT_SCHEME)}")
    if hidden:
        log.warning("%s: ignored %d hidden entries (dotfiles such as ._* AppleDouble files)", root, len(hidden))
    if not cases:
        raise ValueError(f"{root}: no cases found in {fmt} layout")
    return Dataset(root, fmt, get_scheme(FORMAT_SCHEME[fmt]), tuple(cases), CHANNELS, tuple(hidden))
