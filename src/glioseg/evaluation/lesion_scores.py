"""``glioseg evaluate --metrics``: the lesion-wise generations as table rows, and their files.

Three official generations, each by name (see the README's "Lesion-wise metrics"):

- ``lesion-2023``: BraTS 2023 (:data:`glioseg.evaluation.lesionwise.GENERATIONS`);
- ``lesion-2024``: BraTS 2024 ``metrics_GLI.py``, its quirks kept;
- ``lesion-2025``: BraTS 2025+ ``brats-evaluation`` / panoptica (:mod:`glioseg.evaluation.panoptic`).

Rows: one per case, generation and region in ``lesion_metrics.csv`` (:data:`CASE_COLUMNS`), one per
reference lesion in ``lesions.csv`` (:data:`LESION_COLUMNS`).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from glioseg.data.labels import LabelScheme
from glioseg.errors import InputError
from glioseg.evaluation import panoptic
from glioseg.evaluation.lesionwise import GENERATIONS, RegionScore, score_lesions
from glioseg.files import atomic_path

#: Every metric set ``glioseg evaluate --metrics`` knows; region (Dice, HD95, volumes) is always computed.
METRICS: tuple[str, ...] = ("region", "lesion-2023", "lesion-2024", "lesion-2025")
LESION_METRICS: tuple[str, ...] = METRICS[1:]
CASE_COLUMNS: tuple[str, ...] = ("case", "metrics", "region", "dice", "hd95", "nsd", "tp", "fp", "fn", "rq")
LESION_COLUMNS: tuple[str, ...] = ("case", "metrics", "region", "lesion", "volume_mm3", "matched", "dice", "hd95",
                                   "counted")
#: The files a lesion-wise evaluation adds beside metrics.csv (an older evaluation's are removed first).
LESION_FILES = ("lesion_metrics.csv", "lesions.csv")
SOURCES = {**{name: rules.source for name, rules in GENERATIONS.items()}, panoptic.NAME: panoptic.SOURCE}
PENALTIES = {**{name: rules.penalty for name, rules in GENERATIONS.items()}, panoptic.NAME: panoptic.HD95_PENALTY}


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"region,lesion-2023"`` (or a sequence of names) → the names, checked, in :data:`METRICS` order."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"unknown metric set(s) {unknown or names!r}; choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names or m == "region")


def generation_scores(name: str, pred_label: np.ndarray, ref_label: np.ndarray, scheme: LabelScheme,
                      spacing: Sequence[float]) -> list[RegionScore]:
    if name == panoptic.NAME:
        return panoptic.score_panoptic(pred_label, ref_label, scheme, spacing)
    return score_lesions(pred_label, ref_label, scheme, spacing, GENERATIONS[name])


def lesion_rows(case_id: str, pred_label: np.ndarray, ref_label: np.ndarray, scheme: LabelScheme,
                spacing: Sequence[float], metrics: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Per-case rows (:data:`CASE_COLUMNS`) and per-lesion rows (:data:`LESION_COLUMNS`) of one case.

    A lesion's HD95 is written with its generation's penalty where it is infinite (no match).
    """
    cases, lesions = [], []
    for name in metrics:
        if name not in LESION_METRICS:
            continue
        for score in generation_scores(name, pred_label, ref_label, scheme, spacing):
            cases.append({"case": case_id, "metrics": name, "region": score.region, "dice": score.dice,
                          "hd95": score.hd95, "nsd": score.nsd, "tp": score.tp, "fp": score.fp, "fn": score.fn,
                          "rq": score.rq})
            for lesion in score.lesions:
                hd95 = PENALTIES[name] if math.isinf(lesion.hd95) else lesion.hd95
                lesions.append({"case": case_id, "metrics": name, "region": score.region, "lesion": lesion.lesion,
                                "volume_mm3": lesion.volume_mm3, "matched": " ".join(map(str, lesion.matched)),
                                "dice": lesion.dice, "hd95": hd95, "counted": int(lesion.counted)})
    return cases, lesions


def summarise_lesions(rows: list[dict], describe) -> dict:
    """summary.json's ``lesionwise``: per generation and region, statistics of Dice, HD95, NSD, RQ
    over cases (``describe``) and TP / FP / FN totals; with each generation's source and penalty."""
    out = {}
    for name in dict.fromkeys(r["metrics"] for r in rows):
        mine = [r for r in rows if r["metrics"] == name]
        regions = {}
        for region in dict.fromkeys(r["region"] for r in mine):
            these = [r for r in mine if r["region"] == region]
            regions[region] = {**{m: describe([r[m] for r in these]) for m in ("dice", "hd95", "nsd", "rq")},
                               **{m: int(sum(r[m] for r in these)) for m in ("tp", "fp", "fn")}}
        out[name] = {"source": SOURCES[name], "hd95_penalty_mm": PENALTIES[name], "regions": regions}
    return out


def _cell(value) -> object:
    return f"{value:.10g}" if isinstance(value, float) else value


def write_lesion_tables(out: Path, case_rows: list[dict], lesions: list[dict]) -> None:
    """lesion_metrics.csv and lesions.csv, each written to a temporary name and renamed."""
    for name, columns, rows in zip(LESION_FILES, (CASE_COLUMNS, LESION_COLUMNS), (case_rows, lesions)):
        with atomic_path(Path(out) / name) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
