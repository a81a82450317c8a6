"""What to predict: dataset folders, single case folders, or named modality files → cases.

Channels are matched by name against the model's channel names (never by file order). A
modality the model needs that is missing, or a named file the model does not take, is an error
that says which files were found and which names were expected.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from glioseg.data.formats import (BRATS2023_SUFFIX, BRATS_SUFFIX, CHANNELS, Case, Dataset, case_folder,
                                  check_case_id, discover, joined, nifti_stem, site_from_case_id)
from glioseg.data.labels import LabelScheme, get_scheme
from glioseg.errors import InputError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CaseInput:
    """One case to predict, with the dataset it is read through and the labels to write."""

    case: Case
    dataset: Dataset
    scheme: LabelScheme


def _niftis(folder: Path) -> list[Path]:
    # By name, not type: a dangling link or a folder named like an image is reported when read.
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and nifti_stem(p.name) is not None)


def _case_folder(folder: Path) -> tuple[Case, str]:
    """A single case folder, found by :func:`case_folder` as ``discover`` finds a dataset's cases."""
    for fmt, suffixes, sep in (("brats", BRATS_SUFFIX, "_"), ("brats2023", BRATS2023_SUFFIX, "-")):
        case = case_folder(folder, suffixes, sep, require_all=False)
        if case.images:
            if case.problems:
                raise joined(folder, case.problems)
            return case, fmt
    raise InputError(f"{folder}: no case images found (looked for *_flair.nii.gz ... (BraTS) and "
                     f"*-t2f.nii.gz ... (BraTS 2023)); found {[p.name for p in _niftis(folder)]}")


def check_channels(case: Case, channels: tuple[str, ...], source: Path, named: bool = False) -> None:
    """The case must have every channel the model takes; named files must not add others."""
    missing = [c for c in channels if c not in case.images]
    extra = [c for c in case.images if c not in channels]
    if missing:
        found = ", ".join(f"{c}={Path(p).name}" for c, p in case.images.items()) or "nothing"
        raise InputError(f"{source}: case {case.case_id} lacks the modality {', '.join(missing)} that the "
                         f"model needs (model channels: {', '.join(channels)}; found {found})")
    if named and extra:
        raise InputError(f"case {case.case_id}: --{' --'.join(extra)} given, but the model takes only "
                         f"{', '.join(channels)}; remove the extra modality")


def _for_model(case: Case, dataset: Dataset, channels, scheme: LabelScheme, source: Path,
               named: bool = False) -> CaseInput:
    check_channels(case, channels, source, named)
    check_case_id(case.case_id, source, "name an output file")
    # Predict never reads the reference label: a broken label file must not stop prediction.
    case = replace(case, label=None, images={c: case.images[c] for c in channels})
    return CaseInput(case, replace(dataset, channels=tuple(channels), scheme=scheme), scheme)


def from_path(path: Path, channels: tuple[str, ...], scheme_name: str | None) -> list[CaseInput]:
    """A dataset folder (any layout ``discover`` knows, or a manifest) or one case folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() and _niftis(path):
        case, fmt = _case_folder(path)
        scheme = get_scheme(scheme_name or fmt)
        dataset = Dataset(path.parent, fmt, scheme, (case,), tuple(channels))
        return [_for_model(case, dataset, channels, scheme, path)]
    dataset = discover(path)
    scheme = get_scheme(scheme_name) if scheme_name else dataset.scheme
    return [_for_model(c, dataset, channels, scheme, path) for c in dataset.cases]


def _check_distinct(given: dict[str, Path], allow: bool) -> None:
    """Two modality flags naming one file is almost always a typo: an error unless allowed."""
    names = list(given)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if os.path.samefile(given[a], given[b]):
                message = f"--{a} and --{b} name the same file {given[b]}"
                if not allow:
                    raise InputError(f"{message}; give each modality its own image (or "
                                     "--allow-duplicate-channels if that is meant)")
                log.warning("%s (allowed by --allow-duplicate-channels)", message)


def from_named_files(files: dict[str, Path | None], case_id: str | None, channels: tuple[str, ...],
                     scheme_name: str, allow_duplicates: bool = False) -> CaseInput:
    """``--flair a.nii.gz --t1 b.nii.gz ... --case-id ID``."""
    given = {c: Path(p) for c, p in files.items() if p is not None}
    if not case_id:
        raise InputError("--case-id is required with named modality files (it names the output)")
    for channel, path in given.items():
        if not path.is_file():
            raise InputError(f"{path}: --{channel} file not found")
    _check_distinct(given, allow_duplicates)
    case = Case(case_id, given, None, site_from_case_id(case_id))
    scheme = get_scheme(scheme_name)
    root = next(iter(given.values())).parent if given else Path(".")
    dataset = Dataset(root, "files", scheme, (case,), tuple(channels))
    return _for_model(case, dataset, channels, scheme, root, named=True)


def collect(paths: list[Path], files: dict[str, Path | None], case_id: str | None,
            channels: tuple[str, ...], scheme_name: str | None, model_scheme: str,
            allow_duplicates: bool = False) -> list[CaseInput]:
    """Every case of the command line; case ids must be unique (they name the outputs)."""
    named = any(p is not None for p in files.values())
    if named and paths:
        raise InputError("give either INPUT folders or named modality files (--flair ...), not both")
    if not named and not paths:
        raise InputError(f"nothing to predict: give INPUT folders or --{' --'.join(CHANNELS)} files")
    if named:
        inputs = [from_named_files(files, case_id, channels, scheme_name or model_scheme, allow_duplicates)]
    else:
        inputs = [item for path in paths for item in from_path(path, channels, scheme_name)]
    ids = [item.case.case_id for item in inputs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"case ids {duplicates} occur more than once; their outputs would collide")
    return inputs
