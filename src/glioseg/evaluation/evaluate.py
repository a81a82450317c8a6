"""``glioseg evaluate``: score prediction files against a dataset's reference labels.

Predictions are ``PRED/<case>.nii.gz`` label maps in the reference dataset's own label convention
and on the reference's exact grid (shape, and affine within :data:`AFFINE_TOLERANCE`). Every
case is read and checked before anything is written; ``metrics.csv`` and ``summary.json`` are
written atomically, then the HTML report. Lesion-wise metric sets (``metrics``, see
:mod:`glioseg.evaluation.lesion_scores`) add ``lesion_metrics.csv`` and ``lesions.csv``.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from glioseg.data.cases import read_label
from glioseg.data.io import DataError, Image
from glioseg.data.labels import REGIONS, LabelScheme, get_scheme, implied_convention_problem
from glioseg.data.sources import Sources, discover_all
from glioseg.errors import GliosegError, InputError
from glioseg.evaluation.lesion_scores import (
    LESION_FILES, LESION_METRICS, lesion_rows, parse_metrics, summarise_lesions, write_lesion_tables,
)
from glioseg.evaluation.metrics import EMPTY_MASK_CONVENTION, METRIC_COLUMNS, evaluate_case
from glioseg.files import atomic_path, write_json
from glioseg.parallel import as_finished, worker_count

log = logging.getLogger(__name__)

AFFINE_TOLERANCE = 1e-4
#: What to do with a reference case that has no prediction file.
MISSING_POLICIES = ("error", "empty", "skip")
COLUMNS: tuple[str, ...] = ("case", "region", *METRIC_COLUMNS)
# the files of an evaluation folder (``glioseg evaluate --out``): per-case rows and the summary
METRICS_FILE, SUMMARY_FILE, REPORT_FILE = "metrics.csv", "summary.json", "report.html"
# One evaluation's outputs: a new one removes all of an older one's before writing its own, so a
# folder never shows new metrics beside an old report (--no-report, or a kill while drawing).
OUTPUTS = (METRICS_FILE, SUMMARY_FILE, REPORT_FILE, *LESION_FILES)
STATISTICS = ("mean and std (sample, ddof=1) over cases; median, q1, q3 are linear-interpolated "
              "50th/25th/75th percentiles; NaN values are left out and n counts the values used")


@dataclass(frozen=True)
class EvaluationResult:
    rows: list[dict]
    summary: dict
    sources: Sources                                        # the reference datasets as discovered
    lesion_rows: list[dict] = field(default_factory=list)   # lesion_metrics.csv
    lesions: list[dict] = field(default_factory=list)       # lesions.csv


def prediction_path(pred_dir: Path, case_id: str) -> Path | None:
    """``pred_dir/<case>.nii.gz`` (or ``.nii``) when it exists."""
    for ext in (".nii.gz", ".nii"):
        if (pred_dir / f"{case_id}{ext}").is_file():
            return pred_dir / f"{case_id}{ext}"
    return None


def check_geometry(pred: Image, ref: Image) -> None:
    """Same shape and affine (within :data:`AFFINE_TOLERANCE`), else a DataError naming both files."""
    if pred.shape != ref.shape:
        raise DataError(pred.path, f"shape {pred.shape} differs from the reference {ref.path}: {ref.shape}")
    if not np.allclose(pred.affine, ref.affine, rtol=0, atol=AFFINE_TOLERANCE):
        worst = float(np.abs(pred.affine - ref.affine).max())
        raise DataError(pred.path, f"affine differs from the reference {ref.path} by up to {worst:.6g} "
                                   f"(tolerance {AFFINE_TOLERANCE}); prediction orientation "
                                   f"{pred.orientation}, reference {ref.orientation}")


def read_pair(pred_path: Path | None, ref_path: Path, scheme: LabelScheme,
              stated: bool = True) -> tuple[np.ndarray, Image]:
    """The prediction's labels (zeros when ``pred_path`` is None) and the checked reference image.
    ``stated``: the scheme was stated (a manifest), not implied by file names."""
    ref, _ = read_label(ref_path, scheme)
    problem = None if stated else implied_convention_problem(np.unique(ref.array), scheme)
    if problem is not None:
        raise DataError(ref_path, problem)
    if pred_path is None:
        return np.zeros(ref.shape, dtype=np.uint8), ref
    pred, _ = read_label(pred_path, scheme)
    check_geometry(pred, ref)
    return pred.array, ref


def score_case_tables(case_id: str, pred_path: Path | None, ref_path: Path, scheme_name: str,
                      stated: bool = True, metrics: tuple[str, ...] = ("region",),
                      ) -> tuple[list[dict], list[dict], list[dict]]:
    """Region rows (:data:`COLUMNS`), lesion-wise case rows and lesion rows of one case."""
    scheme = get_scheme(scheme_name)
    pred_array, ref = read_pair(pred_path, ref_path, scheme, stated)
    rows = [{"case": case_id, **row} for row in evaluate_case(pred_array, ref.array, scheme, ref.spacing)]
    return (rows, *lesion_rows(case_id, pred_array, ref.array, scheme, ref.spacing, metrics))


def score_case(case_id: str, pred_path: Path | None, ref_path: Path, scheme_name: str,
               stated: bool = True) -> list[dict]:
    """Rows of :data:`COLUMNS` for one case; a missing prediction (``None``) is scored as empty."""
    return score_case_tables(case_id, pred_path, ref_path, scheme_name, stated)[0]


def _score_or_message(job: tuple) -> tuple[list[dict], list[dict], list[dict]] | str:
    # A bad case travels back as text, so that every case is scored and all failures are reported.
    try:
        return score_case_tables(*job)
    except (GliosegError, OSError) as exc:
        return str(exc)


def _jobs(sources: Sources, pred_dir: Path, missing_policy: str) -> tuple[list[tuple], list[str]]:
    """Score jobs (case, prediction or None, reference, its dataset's scheme, stated) and the cases
    without a prediction, over every dataset of ``sources``."""
    if missing_policy not in MISSING_POLICIES:
        raise InputError(f"missing-prediction policy must be one of {MISSING_POLICIES}; got {missing_policy!r}")
    roots = ", ".join(str(r) for r in sources.roots)
    labelled = [(d, c) for d, c in sources.pairs() if c.label is not None]
    if not labelled:
        raise InputError(f"{roots}: no case has a reference label; nothing to evaluate against")
    if len(labelled) < len(sources.cases):
        log.warning("%d cases have no reference label and are not evaluated", len(sources.cases) - len(labelled))
    # each case is read in its own dataset's convention (a BraTS 2023 folder beside a 2018 one)
    jobs = [(c.case_id, prediction_path(pred_dir, c.case_id), c.label, d.scheme.name, d.format == "manifest")
            for d, c in labelled]
    missing = [job[0] for job in jobs if job[1] is None]
    if missing and missing_policy == "error":
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"{pred_dir}: no prediction <case>.nii.gz for {len(missing)} of {len(jobs)} "
                         f"cases: {shown} (--missing empty scores them as empty predictions, "
                         f"--missing skip leaves them out)")
    if missing:
        log.warning("%d cases without a prediction are %s: %s", len(missing),
                    "scored as empty masks" if missing_policy == "empty" else "left out", ", ".join(missing))
    if missing_policy == "skip":
        jobs = [job for job in jobs if job[1] is not None]
        if not jobs:
            raise InputError(f"{pred_dir}: no prediction matches a case of {roots}")
    known = {c.case_id for c in sources.cases}
    extra = [p.name for p in pred_dir.glob("*.nii*") if p.name.split(".")[0] not in known]
    if extra:
        log.warning("%s: %d files match no case of the reference and are ignored", pred_dir, len(extra))
    return jobs, missing


def score_all(jobs: list[tuple], workers: int = 1) -> list[dict]:
    """Region rows of every job (in parallel when ``workers`` > 1); all failures are reported together."""
    return score_all_tables(jobs, workers)[0]


def score_all_tables(jobs: list[tuple], workers: int = 1) -> tuple[list[dict], list[dict], list[dict]]:
    """Every job's region rows, lesion-wise case rows and lesion rows, in job order."""
    workers = worker_count(workers, len(jobs))
    bar = dict(total=len(jobs), desc="evaluate", unit="case")
    if workers <= 1:
        results = [_score_or_message(job) for job in tqdm(jobs, **bar)]
    else:
        results = [None] * len(jobs)
        with tqdm(**bar) as progress:
            for index, result in as_finished(_score_or_message, jobs, workers):
                results[index] = result
                progress.update()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise InputError(f"{len(errors)} of {len(jobs)} cases failed:\n  " + "\n  ".join(errors))
    return tuple([row for result in results for row in result[table]] for table in range(3))


def describe(values) -> dict:
    """mean, std, median, q1, q3, n of the finite values (None where undefined)."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "q1": None, "q3": None, "n": 0}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "median": float(median), "q1": float(q1), "q3": float(q3), "n": int(finite.size)}


def region_statistics(rows: list[dict]) -> dict:
    """Per region and metric, :func:`describe` of the rows' values."""
    return {region: {metric: describe([r[metric] for r in rows if r["region"] == region])
                     for metric in METRIC_COLUMNS} for region in REGIONS}


def summarise(rows: list[dict], sources: Sources, missing: list[str] = (), missing_policy: str = "error") -> dict:
    """summary.json's content: statistics per region and metric, with the conventions used; over
    several datasets also each dataset's cases and statistics (``datasets``)."""
    mixed = len({d.scheme.name for d in sources.datasets}) > 1
    summary = {
        # the convention the predictions were read in: each dataset's own where they differ
        "scheme": "per dataset" if mixed else sources.scheme.name,
        "empty_mask_convention": EMPTY_MASK_CONVENTION,
        "statistics": STATISTICS,
        "units": {"hd95": "mm", "pred_ml": "mL", "ref_ml": "mL"},
        "cases": list(dict.fromkeys(r["case"] for r in rows)),
        "missing_predictions": {"policy": missing_policy, "cases": list(missing),
                                "meaning": {"error": "none allowed", "empty": "scored as empty predictions",
                                            "skip": "left out of the tables"}[missing_policy]},
        "regions": region_statistics(rows),
    }
    if not sources.single:
        summary["datasets"] = {
            name: {"root": str(d.root), "scheme": d.scheme.name,
                   "cases": [c for c in summary["cases"] if sources.source_of(c) == name],
                   "regions": region_statistics([r for r in rows if sources.source_of(r["case"]) == name])}
            for name, d in zip(sources.names, sources.datasets)}
    return summary


def write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    """metrics.csv and summary.json, each written to a temporary name and renamed."""
    with atomic_path(out / METRICS_FILE) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_json(out / SUMMARY_FILE, summary, indent=2, end="\n")


def evaluate(pred_dir: Path, ref, out: Path, format: str = "auto", workers: int = 1,
             missing: str = "error", metrics: str | tuple[str, ...] = ("region",)) -> EvaluationResult:
    """Score ``pred_dir`` against the dataset(s) at ``ref`` (one path or several: case ids unique
    across them, each case in its own dataset's label convention); write metrics.csv and summary.json in ``out``
    (and lesion_metrics.csv, lesions.csv when ``metrics`` names lesion-wise sets), after removing
    every output of an older evaluation there, its report.html included."""
    metrics = parse_metrics(metrics)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder does not exist")
    sources = discover_all(ref, format)
    jobs, without = _jobs(sources, pred_dir, missing)
    rows, case_rows, lesions = score_all_tables([(*job, metrics) for job in jobs], workers)
    summary = summarise(rows, sources, without, missing)
    summary["metrics"] = list(metrics)
    if case_rows:
        summary["lesionwise"] = summarise_lesions(case_rows, describe)
    for name in OUTPUTS:   # scored without error: only now is the older evaluation replaced
        (Path(out) / name).unlink(missing_ok=True)
    write_outputs(Path(out), rows, summary)
    if any(m in LESION_METRICS for m in metrics):
        write_lesion_tables(Path(out), case_rows, lesions)
    return EvaluationResult(rows, summary, sources, case_rows, lesions)


def _cell(stats: dict, digits: int) -> str:
    if stats["n"] == 0:
        return "n/a"
    spread = f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.{digits}f}{spread}  (median {stats['median']:.{digits}f})"


def format_table(summary: dict) -> str:
    """The summary as a plain-text table for the terminal."""
    lines = [f"{'region':<7}{'n':>4}  {'Dice':<30}{'HD95 (mm)':<30}{'sensitivity':<14}"]
    for region, stats in summary["regions"].items():
        sens = "n/a" if stats["sensitivity"]["n"] == 0 else f"{stats['sensitivity']['mean']:.3f}"
        lines.append(f"{region:<7}{stats['dice']['n']:>4}  {_cell(stats['dice'], 3):<30}"
                     f"{_cell(stats['hd95'], 2):<30}{sens:<14}")
    for name, part in summary.get("datasets", {}).items():
        dice = "  ".join(f"{region} {_cell(stats['dice'], 3)}" for region, stats in part["regions"].items())
        lines.append(f"{name} ({len(part['cases'])} cases): Dice {dice}")
    lines.append(f"empty masks: {summary['empty_mask_convention']}")
    for name, generation in summary.get("lesionwise", {}).items():
        lines.append(f"{name} (lesion-wise; HD95 penalty {generation['hd95_penalty_mm']:g} mm)")
        for region, stats in generation["regions"].items():
            lines.append(f"  {region:<5}{stats['dice']['n']:>4}  {_cell(stats['dice'], 3):<30}"
                         f"{_cell(stats['hd95'], 2):<30}TP {stats['tp']} FP {stats['fp']} FN {stats['fn']}")
    return "\n".join(lines)
