"""Which post-processing pays, chosen on an experiment's held-out predictions (nnU-Net's way).

Every finished run of an arm predicted its held-out cases (``RUN/predictions``). Each case is
post-processed with every setting of a grid (:data:`TUMOUR_MM3` × :data:`ET_MM3`,
:mod:`glioseg.inference.postprocess`) and scored with BraTS Dice (an empty reference and an empty
prediction score 1). The setting that ships is the one with the best mean Dice over the three
regions and all held-out cases (ties go to the milder setting).

That choice saw every case, so its gain is optimistic. The gain reported is therefore nested:
each fold's cases are post-processed with the setting chosen on the *other* folds' cases, and
compared with no post-processing case by case (paired: mean difference, bootstrap CI, Wilcoxon).
The result file (``DIR/results/postprocess-<arm>.json``) holds no image and can be committed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from glioseg.data.sources import discover_all
from glioseg.data.labels import REGIONS, get_scheme, labels_to_regions
from glioseg.errors import InputError
from glioseg.evaluation.evaluate import prediction_path, read_pair
from glioseg.evaluation.metrics import dice
from glioseg.experiments.plan import Plan
from glioseg.experiments.results import finished_runs
from glioseg.experiments.spec import slug
from glioseg.experiments.stats import Key, bootstrap_ci, describe, wilcoxon_p
from glioseg.files import write_json
from glioseg.inference.postprocess import CHOICE_KIND, PostprocessConfig, postprocess_regions, tumour_components

log = logging.getLogger(__name__)

# up to 100 mL: a second component that large is rare, so the top is nearly nnU-Net's "keep only the
# largest component" (session 12's grid stopped at 20 mL, its best value)
TUMOUR_MM3 = (0, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
ET_MM3 = (0, 50, 100, 200, 300, 500, 750, 1000, 1500)
Setting = tuple[float, float]      # (min_tumour_mm3, min_et_mm3)


@dataclass(frozen=True)
class HeldOut:
    """One held-out case of one run: its prediction and reference label files."""
    case: str
    fold: int
    seed: int
    prediction: Path
    reference: Path
    scheme: str           # the reference's label convention (its dataset's)


def grid() -> list[Setting]:
    """Every setting, mildest first (so that ties go to the smaller intervention)."""
    return sorted(((float(t), float(e)) for t in TUMOUR_MM3 for e in ET_MM3), key=lambda s: (s[0] + s[1], s))


def held_out(plan: Plan, arm: str, data: Path | list[Path] | None = None) -> list[HeldOut]:
    """The held-out cases of ``arm``'s finished runs; predictions that are gone are an error."""
    sources = discover_all(data or plan.spec.data_paths())   # one dataset or several
    labels = {c.case_id: c.label for c in sources.cases}
    cases = []
    for run, result in finished_runs(plan, arm):
        folder = plan.run_dir(run) / "predictions"
        for case in result.test_cases:
            path = prediction_path(folder, case)
            if path is None:
                raise InputError(f"{folder}: no prediction of held-out case {case}; the predictions stay "
                                 "in the run folders (not committed): run this where the experiment ran")
            if labels.get(case) is None:
                raise InputError(f"{sources.dataset_of(case).root}: no reference label for held-out case {case}")
            cases.append(HeldOut(case, run.fold, run.seed, path, labels[case], sources.dataset_of(case).scheme.name))
    return cases


def score_settings(pred: np.ndarray, ref: np.ndarray, scheme_name: str, spacing: Sequence[float],
                   settings: Sequence[Setting]) -> dict[Setting, tuple[float, float, float]]:
    """BraTS Dice (WT, TC, ET) of one case under each setting."""
    scheme = get_scheme(scheme_name)
    regions, truth = labels_to_regions(pred, scheme), labels_to_regions(ref, scheme)
    components = tumour_components(regions.any(axis=0))
    by_tumour = {t: postprocess_regions(regions, spacing, PostprocessConfig(min_tumour_mm3=t), components)
                 for t in sorted({s[0] for s in settings})}
    out = {}
    for tumour, et in settings:
        cleaned = postprocess_regions(by_tumour[tumour], spacing, PostprocessConfig(min_et_mm3=et))
        out[(tumour, et)] = tuple(dice(cleaned[i], truth[i]) for i in range(len(REGIONS)))
    return out


def objective(scores: dict[Key, dict[Setting, tuple]], cases: Sequence[Key], setting: Setting) -> float:
    """Mean over ``cases`` of the mean Dice over the three regions."""
    return float(np.mean([np.mean(scores[c][setting]) for c in cases]))


def best_setting(scores: dict[Key, dict[Setting, tuple]], cases: Sequence[Key]) -> Setting:
    """The setting with the highest :func:`objective` on ``cases``; the mildest among equals."""
    best, value = None, -math.inf
    for setting in grid():
        current = objective(scores, cases, setting)
        if current > value + 1e-12:
            best, value = setting, current
    return best


def nested(scores: dict[Key, dict[Setting, tuple]], folds: dict[Key, int]) -> dict[int, Setting]:
    """Fold → the setting chosen on the other folds' cases (applied to this fold's)."""
    choice = {}
    for fold in sorted(set(folds.values())):
        others = [c for c, f in folds.items() if f != fold]
        choice[fold] = best_setting(scores, others) if others else (0.0, 0.0)
    return choice


def paired(before: Sequence[float], after: Sequence[float], seed: int = 0) -> dict:
    """after − before, case by case: mean, 95 % bootstrap CI, Wilcoxon p, cases better/worse."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    low, high = bootstrap_ci(diff, 10000, seed)
    return {"mean": float(diff.mean()), "ci": [low, high], "p": wilcoxon_p(diff),
            "better": int((diff > 1e-12).sum()), "worse": int((diff < -1e-12).sum())}


def summary_of(rows: list[dict], key: str) -> dict:
    return {r: describe([row[key][i] for row in rows]) for i, r in enumerate(REGIONS)}


def paired_summary(rows: list[dict], before_key: str, after_key: str) -> dict:
    """Per region and for the mean of the three: both sides described, and after − before paired."""
    out = {}
    for i, region in enumerate(REGIONS):
        before, after = [r[before_key][i] for r in rows], [r[after_key][i] for r in rows]
        out[region] = {"none": describe(before), "post": describe(after), "difference": paired(before, after)}
    before = [float(np.mean(r[before_key])) for r in rows]
    after = [float(np.mean(r[after_key])) for r in rows]
    out["mean"] = {"none": describe(before), "post": describe(after), "difference": paired(before, after)}
    return out


def nested_summary(rows: list[dict]) -> dict:
    return paired_summary(rows, "none", "nested")


def _as_config(setting: Setting) -> dict:
    return PostprocessConfig(min_tumour_mm3=setting[0], min_et_mm3=setting[1]).to_dict()


def choose_postprocess(plan: Plan, arm: str | None = None, data: Path | list[Path] | None = None) -> dict:
    """Score the grid on ``arm``'s held-out predictions; the choice, its nested gain and the table."""
    arm = arm or plan.spec.reference
    cases = held_out(plan, arm, data)
    settings, scores, folds = grid(), {}, {}
    for item in tqdm(cases, desc="post-processing grid", unit="case"):
        pred, ref = read_pair(item.prediction, item.reference, get_scheme(item.scheme))
        key = (item.case, item.seed)
        scores[key] = score_settings(pred, ref.array, item.scheme, ref.spacing, settings)
        folds[key] = item.fold
    chosen, choices = best_setting(scores, list(scores)), nested(scores, folds)
    rows = [{"case": k[0], "seed": k[1], "fold": folds[k],
             "none": list(scores[k][(0.0, 0.0)]), "nested": list(scores[k][choices[folds[k]]]),
             "chosen": list(scores[k][chosen])} for k in scores]
    summary = nested_summary(rows)
    pays = summary["mean"]["difference"]["mean"] > 0
    table = [{"min_tumour_mm3": s[0], "min_et_mm3": s[1],
              **{r: float(np.mean([scores[k][s][i] for k in scores])) for i, r in enumerate(REGIONS)},
              "mean": objective(scores, list(scores), s)} for s in settings]
    return {"kind": CHOICE_KIND, "experiment": plan.spec.name, "arm": arm,
            "cases": len(rows), "grid": {"min_tumour_mm3": list(TUMOUR_MM3), "min_et_mm3": list(ET_MM3)},
            "chosen": _as_config(chosen), "pays": bool(pays),
            "recommended": _as_config(chosen if pays else (0.0, 0.0)),
            "nested": {"choices": {str(f): _as_config(s) for f, s in choices.items()}, "summary": summary},
            "chosen_summary": summary_of(rows, "chosen"), "table": table, "per_case": rows}


def result_path(plan: Plan, arm: str, tta: bool = False) -> Path:
    return plan.out / "results" / f"postprocess-{slug(arm)}{'-tta' if tta else ''}.json"


def write_choice(plan: Plan, choice: dict) -> Path:
    path = result_path(plan, choice["arm"], choice.get("tta", False))
    write_json(path, choice, indent=1, end="\n")
    return path


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _paired_rows(summary: dict, medians: bool) -> list[str]:
    """Markdown rows of a :func:`paired_summary`: each side's mean (and median), the paired difference."""
    side = (lambda d: f"{_f(d['mean'])} / {_f(d['median'])}") if medians else (lambda d: _f(d["mean"]))  # noqa: E731
    rows = []
    for region in (*REGIONS, "mean"):
        s, d = summary[region], summary[region]["difference"]
        rows.append(f"| {region} | {side(s['none'])} | {side(s['post'])} | {d['mean']:+.3f} "
                    f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {d['p']:.2g} | {d['better']} / {d['worse']} |")
    return rows


def format_choice(choice: dict) -> str:
    """Markdown: the nested gain per region and the best settings of the grid."""
    c, nested_ = choice["chosen"], choice["nested"]["summary"]
    flips = ("on probabilities averaged over the 8 axis flips (--tta), against the network's labels "
             "without flips; " if choice.get("tta") else "")
    lines = [f"Post-processing of arm {choice['arm']!r} over {choice['cases']} held-out cases, {flips}chosen "
             f"{PostprocessConfig.from_dict(c).describe()}; "
             f"{'it pays' if choice['pays'] else 'it does not pay'} in the nested estimate "
             f"(each fold post-processed with the setting chosen on the other folds).", "",
             "| region | none: mean / median | nested post-processed: mean / median | difference [95 % CI] | p (Wilcoxon) | better / worse |",
             "|---|---|---|---|---|---|"]
    lines += _paired_rows(nested_, medians=True)
    if "tta_alone" in choice:
        lines += ["", "The flips alone (0.5, no rules) against the labels without flips:", "",
                  "| region | without flips | with flips | difference [95 % CI] | p (Wilcoxon) | better / worse |",
                  "|---|---|---|---|---|---|"]
        lines += _paired_rows(choice["tta_alone"], medians=False)
    if "threshold_table" in choice:   # glioseg.experiments.thresholds
        lines += ["", "Mean Dice of each region with only its threshold moved (the others at 0.5):", "",
                  "| threshold | WT | TC | ET |", "|---|---|---|---|"]
        lines += [f"| {r['threshold']:g} | {r['WT']:.4f} | {r['TC']:.4f} | {r['ET']:.4f} |"
                  for r in choice["threshold_table"]]
    best = sorted(choice["table"], key=lambda r: -r["mean"])[:8]
    lines += ["", "| min tumour mm³ | min ET mm³ | WT | TC | ET | mean |", "|---|---|---|---|---|---|"]
    none = next(r for r in choice["table"] if r["min_tumour_mm3"] == 0 and r["min_et_mm3"] == 0)
    for r in [none, *[b for b in best if b is not none]]:
        lines.append(f"| {r['min_tumour_mm3']:g} | {r['min_et_mm3']:g} | {r['WT']:.4f} | {r['TC']:.4f} | "
                     f"{r['ET']:.4f} | {r['mean']:.4f} |")
    return "\n".join(lines)
