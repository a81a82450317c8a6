"""Dataset layouts: find the cases of a dataset and name their channels.

Channels are named, never ordered by glob: every format maps its files onto glioseg's
canonical channel names :data:`CHANNELS`, and that order is the tensor's channel order.
Every path a dataset names (``dataset.json``, a manifest) must resolve inside the dataset
root, and dotfiles (``._*`` AppleDouble files from MSD tarballs) are ignored with one
counted warning.
"""
from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from glioseg.data.errors import DataError
from glioseg.data.labels import LabelScheme, get_scheme
from glioseg.errors import InputError
from glioseg.files import SAFE_NAME

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
FORMAT_SCHEME = {"msd": "msd", "brats": "brats", "brats2023": "brats2023", "manifest": "brats"}
FORMATS = ("auto", *FORMAT_SCHEME)   # what --format takes: "auto" detects the layout
BRATS_SUFFIX = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
BRATS2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
MSD_MODALITIES = {"flair": "flair", "t1w": "t1", "t1gd": "t1ce", "t2w": "t2"}
# Other names the same contrasts go by (BraTS 2023, converters); used for MSD modality names
# and manifest columns. Matching is case-insensitive.
CHANNEL_ALIASES = {
    **{c: c for c in CHANNELS}, **MSD_MODALITIES,
    "t2f": "flair", "t2-flair": "flair", "t1n": "t1", "t1c": "t1ce",
}
MANIFEST_KEYS = ("case", *CHANNELS, "label", "site")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
# BraTS 2017-2019 names carry the institution; glioseg's phantoms (Phantom_SITEA_001) mimic that.
_BRATS_SITE = re.compile(r"^(?:Brats1[789]|Phantom)_(?P<site>[A-Za-z0-9]+)_", re.IGNORECASE)
_NOT_SITES = {"training", "validation", "testing"}


@dataclass(frozen=True)
class Case:
    """One case: its channel files by canonical name, its label file and its site.

    ``volume_index`` is set for 4-D files holding several channels (MSD): channel name →
    index along the file's last axis; then every entry of ``images`` is the same file.
    ``problems`` says what discovery found wrong (a BraTS channel file absent or given twice,
    an unrecognised file, an unsafe case id), only when :func:`discover` runs with
    ``strict=False``, as ``glioseg verify`` does; files that dataset.json or a manifest names
    but that do not exist fail when they are read.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    site: str | None = None
    volume_index: dict[str, int] | None = None
    problems: tuple[DataError, ...] = ()

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
    """The institution in a BraTS 2017–2019 case name (``Brats18_TCIA01_201_1`` → ``TCIA01``),
    or the synthetic site of a glioseg phantom (``Phantom_SITEA_001`` → ``SITEA``)."""
    match = _BRATS_SITE.match(case_id)
    if match is None or match.group("site").lower() in _NOT_SITES:
        return None
    return match.group("site")


def inside_root(root: Path, candidate: Path | str, source: Path) -> Path:
    """Resolve ``candidate`` relative to ``root``; it must stay inside ``root`` (symlinks too)."""
    text = str(candidate)
    if "$" in text or text.startswith("~"):
        raise DataError(source, f"path {text!r} uses a variable or '~'; expected a path relative to {root}")
    path = Path(text)
    if path.is_absolute():
        raise DataError(source, f"path {text!r} is absolute; expected a path relative to {root}")
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


def _hidden_in(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in _visible(folder.iterdir())[1]]


def detect_format(root: Path) -> str:
    """Guess the layout of ``root``; a ``ValueError`` says what was looked for."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() in (".csv", ".json"):
        return "manifest"
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    for sub in _visible(p for p in root.iterdir() if p.is_dir())[0] if root.is_dir() else []:
        if _find(sub, f"{sub.name}_flair"):
            return "brats"
        if _find(sub, f"{sub.name}-t2f"):
            return "brats2023"
    raise InputError(
        f"{root}: no known dataset layout (looked for MSD dataset.json + imagesTr/, BraTS "
        f"<case>/<case>_flair.nii.gz, BraTS 2023 <case>/<case>-t2f.nii.gz, or a .csv/.json manifest); "
        f"use --format to force one")


def _find(folder: Path, stem: str) -> Path | None:
    # By name, not type: a dangling link or a folder in place of the file still shows the layout.
    for ext in NIFTI_EXTENSIONS:
        if os.path.lexists(folder / f"{stem}{ext}"):
            return folder / f"{stem}{ext}"
    return None


def nifti_stem(name: str) -> str | None:
    """``name`` without its NIfTI extension, or ``None`` when it is no NIfTI name."""
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def check_case_id(case_id: str, source: Path | str, use: str = "name a file or folder") -> None:
    """A :class:`DataError` unless ``case_id`` is a plain name (:data:`glioseg.files.SAFE_NAME`)."""
    if not SAFE_NAME.match(case_id):
        raise DataError(source, f"case id {case_id!r} cannot {use}; expected letters, digits, '.', '_' "
                                "or '-' (not starting with '.')")


def _candidates(folder: Path, suffixes: dict[str, str], sep: str):
    """Channel (or ``"label"``) → the NIfTI entries naming it; unrecognised names; alias hints."""
    by_tail = {v.lower(): k for k, v in suffixes.items()}
    entries = []
    for entry in _visible(folder.iterdir())[0]:
        stem = nifti_stem(entry.name)
        if stem is not None:
            tail = stem.rsplit(sep, 1)[-1]
            low = tail.lower()
            # (channel, named by the layout's own name rather than an alias)
            named_as = ("label", True) if low == "seg" else (by_tail[low], True) if low in by_tail \
                else (CHANNEL_ALIASES.get(low), False)
            entries.append((entry, tail, *named_as))
    named = {channel for _, _, channel, own in entries if own}
    found: dict[str, list[Path]] = {}
    unknown, aliases = [], []
    for entry, tail, channel, own in entries:
        if channel is not None and (own or channel in named):
            found.setdefault(channel, []).append(entry)
        else:  # an alias alone is not this layout's name for the file
            unknown.append(entry.name)
            aliases += [f"{tail} is another name for {channel}"] if channel else []
    return found, unknown, aliases


def case_folder(folder: Path, suffixes: dict[str, str], sep: str, require_all: bool = True) -> Case:
    """The channel files and label of one BraTS-style case folder, with what is wrong with it.

    The one discovery rule of every command (verify, preprocess, train, predict): a NIfTI entry
    is a candidate for a channel when the text after its last ``sep`` is the layout's name of
    it or one of :data:`CHANNEL_ALIASES` (``_t1Gd`` for t1ce). Two candidates for one channel
    (``_flair.nii.gz`` beside ``_flair.nii``) and an alias-named or unrecognised file are
    ``problems`` naming the files, and so is a missing channel with ``require_all`` (predict
    leaves that to the model's channels); entries are matched by name, so a folder or a
    dangling link in place of a file is a problem that says what it is.
    """
    found, unknown, aliases = _candidates(folder, suffixes, sep)
    problems = [DataError(folder, f"two files for {c}: {', '.join(p.name for p in paths)}; expected one "
                                  "(remove the others)") for c, paths in found.items() if len(paths) > 1]
    problems += [DataError(folder, f"missing the {c} image {folder.name}{sep}{s}.nii.gz")
                 for c, s in suffixes.items() if require_all and c not in found]
    if unknown:
        problems.append(DataError(folder, f"unrecognised NIfTI files {unknown}{''.join(f' ({a})' for a in aliases)}; "
                                          f"a case folder of this layout holds <case>{sep}"
                                          f"{{{','.join(suffixes.values())}}}.nii.gz (and {sep}seg)"))
    not_files = {p: e for paths in found.values() for p in paths if (e := _not_a_file(p)) is not None}
    problems += not_files.values()  # said once, here: the reader would call it "no such file"
    found = {c: paths for c, paths in found.items() if paths[0] not in not_files}
    label = found.pop("label", [None])[0]
    images = {c: found[c][0] for c in suffixes if c in found}
    return Case(folder.name, images, label, site_from_case_id(folder.name), problems=tuple(problems))


def _not_a_file(entry: Path) -> DataError | None:
    """What ``entry`` is when it is not a (link to a) regular file, named for the user."""
    if entry.is_symlink() and not entry.exists():
        return DataError(entry, f"is a dangling symbolic link (to {os.readlink(entry)}); expected a NIfTI file")
    if entry.is_dir():
        return DataError(entry, "is a directory; expected a NIfTI file")
    return None


def joined(where: Path, problems) -> DataError:
    """One error for several problems of one case (the error itself when there is one)."""
    if len(problems) == 1:
        return problems[0]
    return DataError(where, f"{len(problems)} problems: " + " | ".join(str(p) for p in problems))


def _broken_link(entry: Path) -> DataError | None:
    """A link at the dataset's top that leads nowhere: a loop (``a -> b -> a``) or a dangling link.
    ``is_dir()`` answers False for both, so without this such a case folder vanished without a word."""
    if not entry.is_symlink():
        return None
    try:
        entry.stat()
    except OSError as exc:
        kind = "a symbolic link loop" if exc.errno == errno.ELOOP else "a dangling symbolic link"
        return DataError(entry, f"is {kind} (to {os.readlink(entry)}); expected a case folder or a link to one")
    return None


def _discover_brats(root: Path, suffixes: dict[str, str], sep: str, strict: bool) -> tuple[list[Case], list[Path]]:
    folders, hidden = _visible(p for p in root.iterdir() if p.is_dir())
    cases = []
    for entry in _visible(root.iterdir())[0]:
        broken = _broken_link(entry)
        if broken is not None:
            if strict:
                raise broken
            cases.append(Case(entry.name, {}, problems=(broken,)))
    for folder in folders:
        case = case_folder(folder, suffixes, sep)
        try:
            images = {c: inside_root(root, p.relative_to(root), folder) for c, p in case.images.items()}
            label = inside_root(root, case.label.relative_to(root), folder) if case.label else None
            case = replace(case, images=images, label=label)
        except DataError as exc:  # a link out of the root: nothing of the case is read
            case = replace(case, images={}, label=None, problems=(*case.problems, exc))
        if strict and case.problems:
            raise joined(folder, case.problems)
        cases.append(case)
        hidden += _hidden_in(folder)
    return cases, hidden


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))   # a byte-order mark (Windows editors) is no error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read {what}: {exc}") from None


def _field_type(meta_path: Path, name: str, value, kind: type, expected: str) -> None:
    """A dataset.json field of the wrong JSON type (null, a list for an object) is one line naming it."""
    if not isinstance(value, kind):
        found = "null" if value is None else {list: "a list", dict: "an object", str: "a string"}.get(
            type(value), type(value).__name__)
        raise DataError(meta_path, f'field "{name}" is {found}; expected {expected}')


def _msd_channels(meta: dict, meta_path: Path) -> dict[str, int]:
    """Channel name → volume index from dataset.json's ``modality`` (never from file order)."""
    modality = meta.get("modality", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    _field_type(meta_path, "modality", modality, dict, 'an object such as {"0": "FLAIR", "1": "T1w", ...}')
    index = {}
    for key, name in modality.items():
        canonical = CHANNEL_ALIASES.get(str(name).lower())
        if canonical is None or canonical in index:
            raise DataError(meta_path, f"modality {key}: {name!r} is unknown or repeated; expected each of "
                                       "FLAIR, T1w, T1gd, T2w once")
        if not str(key).isdigit():
            raise DataError(meta_path, f"modality key {key!r} is not a volume index; expected \"0\" to \"3\"")
        index[canonical] = int(key)
    if set(index) != set(CHANNELS) or sorted(index.values()) != list(range(len(index))):
        raise DataError(meta_path, f"modality {modality} does not name {', '.join(CHANNELS)} as volumes 0..3")
    return index


def _check_msd_labels(meta: dict, meta_path: Path) -> None:
    if "labels" not in meta:
        return
    _field_type(meta_path, "labels", meta["labels"], dict, 'an object such as {"0": "background", "1": "edema", ...}')
    if not all(str(k).isdigit() for k in meta["labels"]):
        raise DataError(meta_path, f"labels {meta['labels']} must be keyed by label values \"0\" to \"3\"")
    found = sorted(int(k) for k in meta["labels"])
    expected = sorted(get_scheme("msd").allowed)
    if found != expected:
        raise DataError(meta_path, f"labels {meta['labels']} have values {found}; expected the MSD Task01 "
                                   f"scheme {expected} (0 background, 1 edema, 2 non-enhancing, 3 enhancing)")


def _discover_msd(root: Path) -> tuple[list[Case], list[Path]]:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path, "dataset.json")
    if not isinstance(meta, dict):
        raise DataError(meta_path, f"expected a JSON object, got {type(meta).__name__}")
    index = _msd_channels(meta, meta_path)
    _check_msd_labels(meta, meta_path)
    training = meta.get("training", [])
    _field_type(meta_path, "training", training, list, 'a list of {"image": ..., "label": ...} entries')
    cases = []
    for n, entry in enumerate(training):
        if not isinstance(entry, dict) or not entry.get("image"):
            raise DataError(meta_path, f"training entry {n + 1} has no 'image': {entry!r}")
        image = inside_root(root, entry["image"], meta_path)
        label = inside_root(root, entry["label"], meta_path) if entry.get("label") else None
        case_id = image.name.split(".")[0]
        cases.append(Case(case_id, {c: image for c in CHANNELS}, label, None, dict(index)))
    return cases, _hidden_in(root / "imagesTr", root / "labelsTr", root / "imagesTs")


def _manifest_rows(path: Path) -> tuple[list[dict], str]:
    """Rows of a manifest and its label scheme (a JSON object may name one; default brats)."""
    if path.suffix.lower() == ".json":
        data = _read_json(path, "manifest")
        rows, scheme = (data.get("cases"), data.get("scheme", "brats")) if isinstance(data, dict) else (data, "brats")
    else:
        try:
            # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, read as part of the first column
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows, scheme = list(csv.DictReader(fh)), "brats"
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(path, f"cannot read manifest: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(path, "expected a list of case objects (or {\"scheme\": ..., \"cases\": [...]})")
    if scheme not in ("msd", "brats", "brats2023", "brats2013"):
        raise DataError(path, f"scheme {scheme!r} is unknown; expected msd, brats, brats2023 or brats2013")
    return rows, scheme


def _manifest_row(row: dict, n: int, path: Path) -> dict[str, str]:
    named = {}
    for key, value in row.items():
        canonical = CHANNEL_ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if canonical not in MANIFEST_KEYS:
            raise DataError(path, f"row {n + 1}: unknown column {key!r}; valid: {', '.join(MANIFEST_KEYS)} "
                                  f"(or aliases {', '.join(sorted(set(CHANNEL_ALIASES) - set(CHANNELS)))})")
        named[canonical] = str(value).strip() if value is not None else ""
    missing = [c for c in ("case", *CHANNELS) if not named.get(c)]
    if missing:
        raise DataError(path, f"row {n + 1} lacks {', '.join(missing)}")
    return named


def _discover_manifest(path: Path) -> tuple[list[Case], str]:
    """A CSV (columns case, flair, t1, t1ce, t2, label, site) or JSON list of such objects."""
    root = path.parent
    rows, scheme = _manifest_rows(path)
    cases = []
    for n, raw in enumerate(rows):
        row = _manifest_row(raw, n, path)
        images = {c: inside_root(root, row[c], path) for c in CHANNELS}
        label = inside_root(root, row["label"], path) if row.get("label") else None
        site = row.get("site") or site_from_case_id(row["case"])
        cases.append(Case(row["case"], images, label, site, problems=_shared_files(images, n, path)))
    return cases, scheme


def _shared_files(images: dict[str, Path], n: int, path: Path) -> tuple[DataError, ...]:
    """Two channel columns naming one file is a typo as two --flags are (one file per channel)."""
    by_file: dict[Path, list[str]] = {}
    for channel, image in images.items():
        by_file.setdefault(image, []).append(channel)
    return tuple(DataError(path, f"row {n + 1}: {' and '.join(names)} name the same file {image}; "
                                 "expected one file per channel")
                 for image, names in by_file.items() if len(names) > 1)


def _with_id_checked(case: Case, source: Path, strict: bool) -> Case:
    """The case id names cache folders and predictions: an unsafe one fails every command."""
    try:
        check_case_id(case.case_id, source)
    except DataError as exc:
        if strict:
            raise
        return replace(case, problems=(*case.problems, exc))
    return case


def discover(root: Path | str, format: str = "auto", *, strict: bool = True) -> Dataset:
    """Find every case of the dataset at ``root`` (a folder, or a manifest file).

    With ``strict`` (the default) a case folder's problem (:func:`case_folder`) or an unsafe
    case id is an error at once; without it the case carries its ``problems`` so that
    ``glioseg verify`` can report every problem of every case.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file() and root.name == "dataset.json":
        root = root.parent  # an MSD task named by its dataset.json
    fmt = detect_format(root) if format in (None, "auto") else format
    if fmt not in FORMAT_SCHEME:
        raise InputError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if (fmt == "manifest") != root.is_file():
        expected = "a .csv or .json manifest file" if fmt == "manifest" else "a folder"
        raise InputError(f"{root}: the {fmt} format expects {expected}")
    hidden: list[Path] = []
    scheme = FORMAT_SCHEME[fmt]
    if fmt == "brats":
        cases, hidden = _discover_brats(root, BRATS_SUFFIX, "_", strict)
    elif fmt == "brats2023":
        cases, hidden = _discover_brats(root, BRATS2023_SUFFIX, "-", strict)
    elif fmt == "msd":
        cases, hidden = _discover_msd(root)
    else:
        cases, scheme = _discover_manifest(root)
    if hidden:
        log.warning("%s: ignored %d hidden entries (dotfiles such as ._* AppleDouble files)", root, len(hidden))
    if not cases:
        raise InputError(f"{root}: no cases found in {fmt} layout")
    cases = [_with_id_checked(case, root, strict) for case in cases]
    failing = next((case for case in cases if case.problems), None)
    if strict and failing is not None:
        raise joined(root, failing.problems)
    repeated = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if repeated:
        raise InputError(f"{root}: case ids repeated: {', '.join(repeated)}; expected each case once")
    return Dataset(root, fmt, get_scheme(scheme), tuple(cases), CHANNELS, tuple(hidden))
