"""Statistics against hand-computed values and SciPy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from glioseg.experiments import stats


def test_describe_matches_hand_computed_values_and_skips_undefined():
    out = stats.describe([1.0, 2.0, 4.0, None, math.nan])
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(7 / 3)
    assert out["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert out["median"] == 2.0
    assert stats.describe([3.0])["sd"] is None
    assert stats.describe([])["n"] == 0


def test_holm_matches_hand_computed_adjustment():
    # sorted 0.01, 0.03, 0.04 → 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])    # capped at 1
    adjusted = stats.holm([0.02, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])   # NaN not counted in m


def test_wilcoxon_is_scipys_and_all_zero_differences_give_one():
    d = [0.05, -0.01, 0.03, 0.02, 0.04, -0.02, 0.06]
    assert stats.wilcoxon_p(d) == pytest.approx(scipy_stats.wilcoxon(d).pvalue)
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(stats.wilcoxon_p([]))


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(3).normal(0.02, 0.05, size=30)
    first = stats.bootstrap_ci(values, 2000, seed=1)
    assert first == stats.bootstrap_ci(values, 2000, seed=1)
    assert first != stats.bootstrap_ci(values, 2000, seed=2)
    assert first[0] < values.mean() < first[1]
    # a 95 % interval of a mean of 30 values is about ±1.96 standard errors
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert (first[1] - first[0]) / 2 == pytest.approx(half, rel=0.25)
    assert stats.bootstrap_ci([0.1, 0.1, 0.1], 2000, seed=0) == (0.1, 0.1)


def test_paired_differences_use_only_pairs_both_arms_scored():
    arm = {("a", 0): 0.8, ("b", 0): 0.6, ("c", 0): None, ("d", 0): 0.5}
    ref = {("a", 0): 0.7, ("b", 0): 0.7, ("c", 0): 0.4}
    diffs = stats.paired_differences(arm, ref)
    assert diffs == pytest.approx({("a", 0): 0.1, ("b", 0): -0.1})


def test_seeds_of_one_case_are_averaged_into_one_unit():
    diffs = {("a", 0): 0.1, ("a", 1): 0.3, ("b", 0): -0.2, ("b", 1): 0.0}
    assert stats.case_means(diffs) == pytest.approx([0.2, -0.1])
    assert stats.seed_means({("a", 0): 0.5, ("b", 0): 0.7, ("a", 1): 0.1}) == pytest.approx({0: 0.6, 1: 0.1})


def test_compare_reports_difference_ci_holm_and_a_sentence():
    cases = [f"c{i}" for i in range(8)]
    ref = {(c, 0): 0.70 for c in cases}
    up = {(c, 0): 0.70 + 0.01 * (i + 1) for i, c in enumerate(cases)}
    rows = stats.compare({"ref": ref, "up": up, "flat": dict(ref)}, "ref", "WT", "dice", 500, 0, 0.05)
    by_arm = {c.arm: c for c in rows}
    assert by_arm["up"].delta == pytest.approx(0.045)
    raw = scipy_stats.wilcoxon([0.01 * (i + 1) for i in range(8)]).pvalue
    assert by_arm["up"].p == pytest.approx(raw)
    assert by_arm["up"].p_holm == pytest.approx(min(1.0, 2 * raw))     # the smaller of two p-values
    assert by_arm["up"].verdict == "up better at this budget"
    assert by_arm["flat"].p == 1.0 and by_arm["flat"].verdict == "no difference at this budget"
    sentence = by_arm["up"].sentence()
    assert sentence.startswith("up vs ref: ΔWT +0.045 [") and sentence.endswith(": up better at this budget")


def test_a_larger_hd95_is_worse():
    cases = [f"c{i}" for i in range(8)]
    ref = {(c, 0): 10.0 for c in cases}
    far = {(c, 0): 12.0 + i for i, c in enumerate(cases)}
    (row,) = stats.compare({"ref": ref, "far": far}, "ref", "TC", "hd95", 500, 0, 0.05)
    assert row.verdict == "far worse at this budget"
    assert "ΔTC HD95 +5.50" in row.sentence()


def test_too_few_cases_or_none_are_said_so_not_called_no_difference():
    five = {(f"c{i}", 0): 0.5 + 0.1 * i for i in range(5)}
    (row,) = stats.compare({"ref": {k: 0.0 for k in five}, "a": five}, "ref", "WT", "dice", 200, 0, 0.05)
    assert row.verdict == "too few cases (n = 5) for the signed-rank test at alpha 0.05"
    (none,) = stats.compare({"ref": {}, "a": five}, "ref", "WT", "dice", 200, 0, 0.05)
    assert none.verdict == "no paired cases yet" and none.n_pairs == 0


def test_signed_uses_a_true_minus_sign():
    assert stats.signed(-0.0104, 3) == "\u22120.010"
    assert stats.signed(0.012, 3) == "+0.012"
    assert stats.format_p(0.0004) == "p < 0.001" and stats.format_p(0.4) == "p = 0.4"


def test_a_consistent_but_negligible_difference_gets_no_verdict_of_better():
    cases = [f"c{i}" for i in range(12)]
    ref = {(c, 0): 0.5 + 0.01 * i for i, c in enumerate(cases)}
    tiny = {k: v + 0.0002 + 1e-5 * i for i, (k, v) in enumerate(ref.items())}   # always above, by < 0.001
    row = stats.compare({"ref": ref, "tiny": tiny}, "ref", "WT", "dice", 500, 0, 0.05)[0]
    assert row.p < 0.01 and 0 < row.delta < stats.NEGLIGIBLE["dice"]
    assert row.verdict == "no difference that matters at this budget (|Δ| < 0.001, though consistent)"
