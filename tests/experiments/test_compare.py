"""``glioseg experiment compare``: an arm of one experiment against an arm of another, paired per case,
only where both split the cases alike."""
from __future__ import annotations

import copy

import pytest
import yaml

from glioseg.cli import main
from glioseg.errors import InputError
from glioseg.experiments.compare import compare_sides, load_side, sections, setting_changes
from glioseg.experiments.plan import make_plan, save_plan
from glioseg.experiments.spec import load_spec

from ._results import plan_result
from .conftest import TINY_SPEC

REGIONS = ("WT", "TC", "ET")


def _experiment(data, tmp_path, name, dice_of, device=None, **changes):
    """A saved tiny experiment ``name`` whose runs of arm ``small`` are finished, each held-out case
    scoring ``dice_of(case)`` in every region."""
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "data": str(data), "name": name, **changes}, sort_keys=False))
    plan = make_plan(load_spec(spec), "cpu", tmp_path / name)
    save_plan(plan)
    for run in plan.runs:
        if run.arm != "small":
            continue
        cases = [c for c, fold in plan.folds[run.seed].items() if fold == run.fold]
        rows = [{"case": c, "region": r, "dice": dice_of(c), "hd95": 1.0} for c in cases for r in REGIONS]
        path = plan.result_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        plan_result(plan, run, rows, steps=4, train_wall_s=60.0, s_per_step=0.5, device_description=device).write(path)
    return plan


def _longer():
    budgets = copy.deepcopy(TINY_SPEC["budgets"])
    budgets["cpu"]["steps"] = 8
    return budgets


def test_b_against_a_per_case_with_the_settings_that_differ(phantom_data, tmp_path):
    base = _experiment(phantom_data, tmp_path, "base", lambda case: 0.5)
    # B is better by 0.1 on every case but the first, worse by 0.2 there
    first = sorted(base.folds[0])[0]
    _experiment(phantom_data, tmp_path, "long", lambda case: 0.3 if case == first else 0.6, budgets=_longer())
    a, b = load_side(tmp_path / "base"), load_side(tmp_path / "long")
    rows = compare_sides(a, b)
    assert [(r.comparison.region, r.comparison.metric) for r in rows] == [(r, m) for r in (*REGIONS, "mean")
                                                                          for m in ("dice", "hd95")]
    dice = next(r for r in rows if r.comparison.region == "TC" and r.comparison.metric == "dice")
    comparison, n = dice.comparison, len(base.folds[0])
    assert comparison.n_cases == n == 6 and (dice.higher, dice.lower) == (n - 1, 1)
    assert comparison.delta == pytest.approx((0.1 * (n - 1) - 0.2) / n)
    assert dice.a["mean"] == pytest.approx(0.5) and dice.b["median"] == pytest.approx(0.6)
    mean = next(r for r in rows if r.comparison.region == "mean" and r.comparison.metric == "dice")
    assert mean.comparison.delta == pytest.approx(comparison.delta)   # every region scored alike
    assert comparison.ci[0] <= comparison.delta <= comparison.ci[1]
    assert setting_changes(a, b) == {"epochs": (2, 4)}      # 4 and 8 steps of 2 a epoch
    text = " ".join(str(part) for part in sections(a, b))
    assert "long/small against base/small" in text and "epochs 2 → 4" in text and "6 held-out cases" in text
    assert "different machines" not in text
    _experiment(phantom_data, tmp_path, "elsewhere", lambda case: 0.6, device="another CPU")
    assert "timed on different machines" in " ".join(str(p) for p in sections(a, load_side(tmp_path / "elsewhere")))


def test_two_arms_of_one_experiment_compare_per_region_and_on_their_mean(phantom_data, tmp_path):
    plan = _experiment(phantom_data, tmp_path, "base", lambda case: 0.5)
    first = sorted(plan.folds[0])[0]
    for run in plan.runs:
        if run.arm == "unet":
            cases = [c for c, fold in plan.folds[run.seed].items() if fold == run.fold]
            # per region 0.7 / 0.6 / 0.9 against 0.5; one case's ET has no HD95 (an empty prediction)
            rows = [{"case": c, "region": r, "dice": dice, "hd95": None if (c, r) == (first, "ET") else 2.0}
                    for c in cases for r, dice in zip(REGIONS, (0.7, 0.6, 0.9))]
            plan.result_path(run).parent.mkdir(parents=True, exist_ok=True)
            plan_result(plan, run, rows).write(plan.result_path(run))
    rows = {(r.comparison.region, r.comparison.metric): r.comparison
            for r in compare_sides(load_side(tmp_path / "base"), load_side(tmp_path / "base", "unet"))}
    assert [rows["WT", "dice"].delta, rows["ET", "dice"].delta] == pytest.approx([0.2, 0.4])
    assert rows["mean", "dice"].delta == pytest.approx((0.7 + 0.6 + 0.9) / 3 - 0.5) and rows["mean", "dice"].n_cases == 6
    # the case without an ET HD95 has no mean HD95: five cases paired
    assert rows["mean", "hd95"].n_cases == 5 and rows["mean", "hd95"].delta == pytest.approx(1.0)
    with pytest.raises(InputError, match="compared with itself"):
        compare_sides(load_side(tmp_path / "base"), load_side(tmp_path / "base"))


def test_experiments_that_split_the_cases_differently_are_refused_naming_a_case(phantom_data, tmp_path):
    _experiment(phantom_data, tmp_path, "base", lambda case: 0.5)
    other = _experiment(phantom_data, tmp_path, "other", lambda case: 0.5, folds={"k": 3, "seed": 0})
    base = load_side(tmp_path / "base")
    moved = sorted(c for c in other.folds[0] if other.folds[0][c] != base.plan.folds[0][c])
    with pytest.raises(InputError, match=f"split the cases differently for seed 0: {moved[0]} is in fold"):
        compare_sides(base, load_side(tmp_path / "other"))


def test_an_arm_without_finished_runs_is_an_error(phantom_data, tmp_path):
    _experiment(phantom_data, tmp_path, "base", lambda case: 0.5)
    with pytest.raises(InputError, match="arm 'unet' has no finished run"):
        load_side(tmp_path / "base", "unet")
    with pytest.raises(InputError, match="arm 'nope' has no finished run"):
        load_side(tmp_path / "base", "nope")


def test_the_command_prints_and_writes_the_comparison(phantom_data, tmp_path, capsys):
    _experiment(phantom_data, tmp_path, "base", lambda case: 0.5)
    _experiment(phantom_data, tmp_path, "long", lambda case: 0.6, budgets=_longer())
    out = tmp_path / "compare" / "long-vs-base.md"
    code = main(["experiment", "compare", str(tmp_path / "base"), str(tmp_path / "long"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "| WT | dice | 0.500 (0.500) | 0.600 (0.600) | +0.100" in printed
    assert out.read_text() in printed and "<table" in out.with_suffix(".html").read_text()
    assert "| TC | dice | 0.500 (0.500) | 0.600 (0.600) | +0.100" in printed and "epochs 2 → 4" in printed
