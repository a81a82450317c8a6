"""``glioseg verify``: check every case of a dataset and report what it holds.

Each file is read to the end of its gzip stream (CRC32 and length checked), its header
validated before allocation, its voxels checked finite, and each case's files checked to
share one grid; label files must hold whole numbers of the format's scheme. All problems
of all cases are collected (cases run in parallel processes), printed with file and reason,
and the command exits non-zero if any case is invalid. Several datasets are each reported as one
is, then counted together (:func:`overall`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glioseg.data.cases import CaseFiles, case_path, read_case
from glioseg.data.formats import Case, Dataset
from glioseg.data.labels import REGIONS, LabelScheme
from glioseg.files import write_json as write_json_file
from glioseg.parallel import as_finished, worker_count


@dataclass(frozen=True)
class CaseReport:
    """What ``verify`` found in one case; ``problems`` make it invalid, ``warnings`` do not."""

    case: str
    site: str | None
    shape: tuple[int, ...] | None
    spacing: tuple[float, ...] | None
    orientation: str | None
    labels: tuple[int, ...] | None
    label_voxels: dict[int, int] | None
    volumes_ml: dict[str, float] | None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["label_voxels"] = None if self.label_voxels is None else {str(k): v for k, v in self.label_voxels.items()}
        out["valid"] = self.valid
        return out


def region_volumes_from_counts(counts: dict[int, int], scheme: LabelScheme,
                               spacing: tuple[float, ...]) -> dict[str, float]:
    """WT / TC / ET volumes in mL from label value counts and the voxel spacing in mm."""
    voxel_ml = math.prod(spacing) / 1000.0
    return {r: sum(counts.get(v, 0) for v in scheme.regions[r]) * voxel_ml for r in REGIONS}


def _tumour_outside_images(files: CaseFiles) -> list[str]:
    """A warning when label voxels lie where a channel is 0 (real data has a few; not an error)."""
    if files.label is None or not files.channels or not files.valid:
        return []
    tumour = files.label.array > 0
    zero = {name: int(np.count_nonzero(tumour & (image.array == 0))) for name, image in files.channels.items()}
    if not any(zero.values()):
        return []
    listing = ", ".join(f"{name} {n}" for name, n in zero.items())
    return [f"{files.case.label}: tumour voxels where an image is 0: {listing} (of {int(tumour.sum())})"]


def _unreadable(case: Case, exc: Exception) -> CaseReport:
    return CaseReport(case.case_id, case.site, None, None, None, None, None, None,
                      problems=(f"{case_path(case)}: cannot be checked: {type(exc).__name__}: {exc}",))


def verify_case(case: Case, dataset: Dataset, verify_stream: bool = True) -> CaseReport:
    """Read and check every file of ``case``; never raises for bad data, it reports it.

    A failure the checks do not know (a reader library's own error on a hostile file) fails
    this case only, not the dataset's other cases running beside it.
    """
    try:
        files = read_case(case, dataset, verify_stream=verify_stream)
    except Exception as exc:  # noqa: BLE001 - reported as the case's problem, with its type
        return _unreadable(case, exc)
    grid = next(iter(files.channels.values()), files.label)
    counts = files.label_counts
    volumes = None
    if counts is not None and grid is not None:
        volumes = region_volumes_from_counts(counts, dataset.scheme, grid.spacing)
    return CaseReport(
        case=case.case_id,
        site=case.site,
        shape=grid.shape[:3] if grid is not None else None,
        spacing=grid.spacing if grid is not None else None,
        orientation=grid.orientation if grid is not None else None,
        labels=tuple(sorted(counts)) if counts is not None else None,
        label_voxels=dict(sorted(counts.items())) if counts is not None else None,
        volumes_ml=volumes,
        problems=tuple(str(p) for p in files.problems),
        warnings=tuple(files.warnings + _tumour_outside_images(files)),
    )


def verify_dataset(dataset: Dataset, workers: int = 0, verify_stream: bool = True) -> list[CaseReport]:
    """A report per case, in the dataset's case order; ``workers`` processes (0: one per core)."""
    cases = dataset.cases
    workers = worker_count(workers, len(cases))
    # Each task carries its own case only, not the whole case list.
    light = dataclasses.replace(dataset, cases=())
    bar = tqdm(total=len(cases), desc="verify", unit="case")
    reports: dict[str, CaseReport] = {}
    try:
        if workers == 1:
            for case in cases:
                reports[case.case_id] = verify_case(case, light, verify_stream)
                bar.update()
        else:
            check = functools.partial(verify_case, dataset=light, verify_stream=verify_stream)
            for index, report in as_finished(check, cases, workers):
                reports[cases[index].case_id] = report
                bar.update()
    finally:
        bar.close()
    return [reports[case.case_id] for case in cases]


def _cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def format_table(reports: list[CaseReport]) -> str:
    """The per-case table ``glioseg verify`` prints."""
    head = ("case", "site", "shape", "spacing mm", "orient", "labels", "WT mL", "TC mL", "ET mL", "status")
    rows = [head]
    for r in reports:
        status = "ok" if r.valid else f"INVALID ({len(r.problems)})"
        if r.warnings:
            status += f", {len(r.warnings)} warning{'s' * (len(r.warnings) > 1)}"
        vol = r.volumes_ml or {}
        rows.append((
            r.case, _cell(r.site), _cell(r.shape and "x".join(map(str, r.shape))),
            _cell(r.spacing and "x".join(f"{s:.3g}" for s in r.spacing)), _cell(r.orientation),
            _cell(r.labels and ",".join(map(str, r.labels))),
            *(_cell(vol.get(k), "{:.2f}") for k in REGIONS), status,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def summary(reports: list[CaseReport], dataset: Dataset) -> str:
    """Problems and warnings with file and reason, then one counted summary line."""
    lines = []
    for r in reports:
        lines += [f"PROBLEM {r.case}: {p}" for p in r.problems]
    for r in reports:
        lines += [f"warning {r.case}: {w}" for w in r.warnings]
    invalid = sum(not r.valid for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    background = sum(r.label_voxels is not None and set(r.label_voxels) <= {0} for r in reports)
    lines.append(f"{len(reports)} cases ({dataset.format}, labels {dataset.scheme.name}): "
                 f"{len(reports) - invalid} valid, {invalid} invalid; {warnings} warnings "
                 f"({background} background-only labels); {len(dataset.ignored)} dotfiles ignored")
    return "\n".join(lines)


def overall(results: list[tuple[str, Dataset, list[CaseReport]]]) -> str:
    """The line under several datasets' reports: every case counted, and per dataset."""
    reports = [r for _, _, rs in results for r in rs]
    invalid = sum(not r.valid for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    each = ", ".join(f"{name} {len(rs)} ({sum(not r.valid for r in rs)} invalid)" for name, _, rs in results)
    return (f"overall: {len(reports)} cases in {len(results)} datasets ({each}): {len(reports) - invalid} valid, "
            f"{invalid} invalid; {warnings} warnings")


def _payload(dataset: Dataset, reports: list[CaseReport]) -> dict:
    return {
        "root": str(dataset.root),
        "format": dataset.format,
        "scheme": dataset.scheme.to_dict(),
        "channels": list(dataset.channels),
        "valid": all(r.valid for r in reports),
        "ignored": [str(p) for p in dataset.ignored],
        "cases": [r.to_dict() for r in reports],
    }


def write_json(path: Path, dataset: Dataset, reports: list[CaseReport]) -> Path:
    """The report as JSON (``cases``: one object per case), written atomically."""
    return write_json_file(path, _payload(dataset, reports), indent=2, end="\n")


def write_json_several(path: Path, results: list[tuple[str, Dataset, list[CaseReport]]]) -> Path:
    """Several datasets' reports as JSON: ``valid`` over all, and one :func:`write_json` object per
    dataset under ``datasets`` (with its ``name``)."""
    payload = {"valid": all(r.valid for _, _, rs in results for r in rs),
               "datasets": [{"name": name, **_payload(dataset, rs)} for name, dataset, rs in results]}
    return write_json_file(path, payload, indent=2, end="\n")
