"""Statistics of an experiment: pure functions of numbers, no files.

Per arm: mean ± sd (sample, ddof 1) and median over (case, seed) values, and the spread of the
per-seed means. Per arm against the reference: the paired difference ``arm − reference`` of
every (case, seed) both arms scored; the confidence interval and the test then treat each case
as one unit (its differences averaged over seeds), because the seeds of one case are not
independent samples: a percentile bootstrap 95 % CI of the mean difference (SciPy, a seeded NumPy
generator) and the Wilcoxon signed-rank p-value (SciPy; all-zero differences give p = 1), with
Holm's step-down correction across the arms compared for the same region and metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

Key = tuple[str, int]   # (case, seed)


def describe(values: Sequence[float]) -> dict:
    """mean, sd, median and n of the finite values (None where undefined)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {"mean": None, "sd": None, "median": None, "n": 0}
    return {"mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "median": float(np.median(finite)), "n": int(finite.size)}


def seed_means(values: Mapping[Key, float]) -> dict[int, float]:
    """Mean over cases per seed (the spread over seeds is the spread of these)."""
    by_seed: dict[int, list[float]] = {}
    for (_, seed), v in values.items():
        if v is not None and math.isfinite(v):
            by_seed.setdefault(seed, []).append(v)
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items())}


def paired_differences(arm: Mapping[Key, float], reference: Mapping[Key, float]) -> dict[Key, float]:
    """``arm − reference`` for every (case, seed) with a finite value in both."""
    ok = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    return {k: arm[k] - reference[k] for k in sorted(set(arm) & set(reference)) if ok(arm[k]) and ok(reference[k])}


def by_case(values: Mapping[Key, float]) -> dict[str, float]:
    """case → its finite values averaged over its seeds, in case order (cases with none left out)."""
    groups: dict[str, list[float]] = {}
    for (case, _), v in values.items():
        if v is not None and math.isfinite(v):
            groups.setdefault(case, []).append(v)
    return {c: float(np.mean(groups[c])) for c in sorted(groups)}


def case_means(differences: Mapping[Key, float]) -> np.ndarray:
    """Each case's differences averaged over its seeds, in case order."""
    return np.asarray(list(by_case(differences).values()), dtype=float)


def bootstrap_ci(values: Sequence[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; a constant sample's interval is that constant."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    if values.size == 1 or np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    result = scipy_stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level,
                                   method="percentile", random_state=np.random.default_rng(seed))
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def wilcoxon_p(values: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; 1 when every difference is zero."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    if np.all(values == 0):
        return 1.0
    return float(scipy_stats.wilcoxon(values).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and is not counted."""
    order = [i for i in sorted(range(len(pvalues)), key=lambda i: pvalues[i]) if not math.isnan(pvalues[i])]
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def signed(value: float, digits: int) -> str:
    """``+0.012`` / ``−0.010`` (a true minus sign), ``n/a`` for NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}".replace("-", "\u2212")


def format_p(p: float) -> str:
    if math.isnan(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


@dataclass(frozen=True)
class Comparison:
    arm: str
    reference: str
    region: str
    metric: str
    n_pairs: int
    n_cases: int
    delta: float
    ci: tuple[float, float]
    p: float
    p_holm: float
    verdict: str

    def sentence(self) -> str:
        digits = 3 if self.metric == "dice" else 2
        name = "" if self.metric == "dice" else " HD95"
        return (f"{self.arm} vs {self.reference}: Δ{self.region}{name} {signed(self.delta, digits)} "
                f"[{signed(self.ci[0], digits)}, {signed(self.ci[1], digits)}], {format_p(self.p_holm)}: "
                f"{self.verdict}")


# Below these a mean paired difference is no difference worth a verdict, however consistent (bf16
# vs fp32 Dice differ in the 4th decimal on every case, which the signed-rank test calls p < 0.001).
NEGLIGIBLE = {"dice": 0.001, "hd95": 0.1}


def verdict(arm: str, delta: float, p_holm: float, alpha: float, higher_is_better: bool, n: int,
            negligible: float = 0.0) -> str:
    if n == 0:
        return "no paired cases yet"
    if 2.0 / 2 ** n >= alpha:
        # the smallest two-sided signed-rank p of n pairs is 2 / 2^n: no outcome could be significant
        return f"too few cases (n = {n}) for the signed-rank test at alpha {alpha:g}"
    if math.isnan(p_holm) or p_holm >= alpha or delta == 0:
        return "no difference at this budget"
    if abs(delta) < negligible:
        return f"no difference that matters at this budget (|Δ| < {negligible:g}, though consistent)"
    better = (delta > 0) == higher_is_better
    return f"{arm} {'better' if better else 'worse'} at this budget"


def compare(values: Mapping[str, Mapping[Key, float]], reference: str, region: str, metric: str,
            resamples: int, seed: int, alpha: float) -> list[Comparison]:
    """Every arm of ``values`` (arm → (case, seed) → value) against ``reference``, Holm-corrected."""
    arms = [a for a in values if a != reference]
    rows = []
    for arm in arms:
        diffs = paired_differences(values[arm], values[reference])
        units = case_means(diffs)
        delta = float(units.mean()) if units.size else math.nan
        rows.append((arm, len(diffs), units.size, delta, bootstrap_ci(units, resamples, seed), wilcoxon_p(units)))
    adjusted = holm([r[5] for r in rows])
    higher = metric == "dice"
    return [Comparison(arm, reference, region, metric, n, m, d, ci, p, q, verdict(arm, d, q, alpha, higher, m,
                                                                           NEGLIGIBLE.get(metric, 0.0)))
            for (arm, n, m, d, ci, p), q in zip(rows, adjusted)]
