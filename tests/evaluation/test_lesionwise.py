"""glioseg's BraTS 2023 and 2024 lesion-wise scores equal the official scripts' (frozen oracles)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from glioseg.data.labels import get_scheme
from glioseg.evaluation.lesionwise import GENERATIONS, brats2023_labels, score_lesions

from ._lesion_cases import random_case, rule_cases
from .oracles import brats2023, brats2024

ORACLES = {"lesion-2023": brats2023.evaluate, "lesion-2024": brats2024.evaluate}
BRATS2023 = get_scheme("brats2023")


def assert_same(ours, oracle, penalty):
    """Per region: case scores and every lesion (number, volume, matches, Dice, HD95) to 1e-6."""
    assert [s.region for s in ours] == list(oracle)
    for score in ours:
        expected = oracle[score.region]
        where = score.region
        assert (score.tp, score.fp, score.fn) == (expected["tp"], expected["fp"], expected["fn"]), where
        assert score.dice == pytest.approx(expected["dice"], abs=1e-6), where
        assert score.hd95 == pytest.approx(expected["hd95"], abs=1e-6), where
        rows = [(l.lesion, l.volume_mm3, l.matched, l.dice, penalty if math.isinf(l.hd95) else l.hd95)
                for l in score.lesions]
        assert [r[:3] for r in rows] == [r[:3] for r in expected["lesions"]], where
        for row, exp in zip(rows, expected["lesions"]):
            assert row[3:] == pytest.approx(exp[3:], abs=1e-6), (where, row[0])


@pytest.mark.parametrize("generation", sorted(ORACLES))
@pytest.mark.parametrize("name", sorted(rule_cases()))
def test_rule_cases_equal_the_official_script(generation, name):
    ref, pred = rule_cases()[name]
    rules = GENERATIONS[generation]
    ours = score_lesions(pred, ref, BRATS2023, (1.0, 1.0, 1.0), rules)
    assert_same(ours, ORACLES[generation](pred, ref), rules.penalty)


@pytest.mark.parametrize("generation", sorted(ORACLES))
@pytest.mark.parametrize("seed", range(6))
def test_random_cases_equal_the_official_script(generation, seed):
    ref, pred = random_case(seed)
    rules = GENERATIONS[generation]
    ours = score_lesions(pred, ref, BRATS2023, (1.0, 1.0, 1.0), rules)
    assert_same(ours, ORACLES[generation](pred, ref), rules.penalty)


def test_anisotropic_spacing_equals_the_official_script():
    ref, pred = random_case(11)
    spacing = (1.0, 1.5, 2.0)
    rules = GENERATIONS["lesion-2023"]
    assert_same(score_lesions(pred, ref, BRATS2023, spacing, rules), brats2023.evaluate(pred, ref, spacing),
                rules.penalty)


def test_rule_cases_hit_their_rules():
    """The named cases really exercise what they are named for (else equality would prove little)."""
    cases = rule_cases()
    r2023 = GENERATIONS["lesion-2023"]
    merged = {s.region: s for s in score_lesions(*cases["merged_after_dilation"][::-1], BRATS2023, (1, 1, 1), r2023)}
    assert len(merged["WT"].lesions) == 1 and merged["WT"].fn == 0
    bridge = {s.region: s for s in score_lesions(*cases["component_touching_two"][::-1], BRATS2023, (1, 1, 1), r2023)}
    assert [l.matched for l in bridge["ET"].lesions] == [(1,), (1,)] and bridge["ET"].fp == 0
    small = {s.region: s for s in score_lesions(*cases["under_threshold"][::-1], BRATS2023, (1, 1, 1), r2023)}
    assert sorted((l.volume_mm3, bool(l.matched), l.counted) for l in small["TC"].lesions) == \
        [(27.0, False, False), (27.0, True, False), (1000.0, True, True)]
    assert (small["TC"].tp, small["TC"].fp, small["TC"].fn) == (1, 1, 0)
    assert small["ET"].lesions[0].counted is False and small["ET"].fn == 0
    empty_ref = score_lesions(*cases["empty_reference"][::-1], BRATS2023, (1, 1, 1), r2023)
    assert all(s.dice == 0 and s.hd95 == 374 and s.fp == 1 for s in empty_ref)
    empty_pred = score_lesions(*cases["empty_prediction"][::-1], BRATS2023, (1, 1, 1), r2023)
    assert all(s.dice == 0 and s.hd95 == 374 and s.fn == 1 for s in empty_pred)
    both = score_lesions(*cases["both_empty"][::-1], BRATS2023, (1, 1, 1), r2023)
    assert all(s.dice == 1 and s.hd95 == 0 and math.isnan(s.rq) for s in both)
    touching = score_lesions(*cases["tissues_touching"][::-1], BRATS2023, (1, 1, 1), GENERATIONS["lesion-2024"])
    netc = next(s for s in touching if s.region == "NETC")
    assert len(netc.lesions) == 1  # two NETC blocks touching one ET block become one lesion


def test_brats_2017_labels_become_2023_labels():
    brats = get_scheme("brats")
    label = np.array([0, 1, 2, 4], dtype=np.uint8).reshape(1, 1, 4)
    assert brats2023_labels(label, brats).ravel().tolist() == [0, 1, 2, 3]
    label = np.array([0, 1, 2, 3, 4], dtype=np.uint8).reshape(1, 1, 5)
    assert brats2023_labels(label, BRATS2023).ravel().tolist() == [0, 1, 2, 3, 4]
