"""glioseg's BraTS 2025 lesion-wise scores equal the organisers' ``brats-evaluation`` (panoptica)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from glioseg.data.labels import get_scheme
from glioseg.evaluation.panoptic import HD95_PENALTY, REGIONS, score_panoptic

from ._lesion_cases import random_case, rule_cases

brats_evaluation = pytest.importorskip("brats_evaluation", reason="the test extras install brats-evaluation")
BRATS2023 = get_scheme("brats2023")


@pytest.fixture(scope="module")
def evaluator():
    from panoptica import Panoptica_Evaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("gli")))


def official(evaluator, pred, ref, spacing):
    """brats-evaluation's per-region dict (``evaluate_single_exam``'s), arrays as nibabel reads them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = evaluator.evaluate(np.asfortranarray(pred), np.asfortranarray(ref), voxelspacing=spacing)
    return {name.upper(): result.to_dict(True) for name, result in results.items()}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)


def assert_same(ours, expected):
    assert sorted(s.region for s in ours) == sorted(expected) and [s.region for s in ours] == list(REGIONS)
    for score in ours:
        exp, where = expected[score.region], score.region
        assert (score.tp, score.fp, score.fn) == (exp["tp"], exp["fp"], exp["fn"]), where
        hd95 = HD95_PENALTY if math.isinf(exp["sq_hd95"]) else exp["sq_hd95"]
        for mine, theirs in ((score.dice, exp["sq_dsc"]), (score.hd95, hd95), (score.nsd, exp["sq_nsd"]),
                             (score.rq, exp["rq"])):
            assert same(mine, float(theirs)), (where, mine, theirs)
        lesions = sorted((l.volume_mm3, l.dice, l.hd95) for l in score.lesions if l.matched)
        instances = sorted((i["volume"], float(i["sq_dsc"]), float(i["sq_hd95"]))
                           for i in exp.get("reference_instances", []) if i["is_matched"])
        assert len(lesions) == len(instances), where
        for mine, theirs in zip(lesions, instances):
            assert mine == pytest.approx(theirs, abs=1e-6), where
        unmatched = sorted(l.volume_mm3 for l in score.lesions if not l.matched)
        assert unmatched == sorted(i["volume"] for i in exp.get("reference_instances", []) if not i["is_matched"])


@pytest.mark.parametrize("name", sorted(rule_cases()))
def test_rule_cases_equal_brats_evaluation(evaluator, name):
    ref, pred = rule_cases()[name]
    assert_same(score_panoptic(pred, ref, BRATS2023, (1.0, 1.0, 1.0)), official(evaluator, pred, ref, (1.0, 1.0, 1.0)))


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_equal_brats_evaluation(evaluator, seed):
    ref, pred = random_case(seed)
    assert_same(score_panoptic(pred, ref, BRATS2023, (1.0, 1.0, 1.0)), official(evaluator, pred, ref, (1.0, 1.0, 1.0)))


def test_anisotropic_spacing_equals_brats_evaluation(evaluator):
    ref, pred = random_case(11)
    spacing = (1.0, 1.5, 2.0)
    assert_same(score_panoptic(pred, ref, BRATS2023, spacing), official(evaluator, pred, ref, spacing))


def test_one_to_one_matching_leaves_the_second_component_a_false_positive():
    """Two predicted halves of one lesion: one match (the larger Dice), one false positive."""
    ref, pred = np.zeros((20, 20, 20), np.uint8), np.zeros((20, 20, 20), np.uint8)
    ref[4:16, 4:16, 4:16] = 2
    pred[4:16, 4:16, 4:11] = 2
    pred[4:16, 4:16, 13:16] = 2
    wt = score_panoptic(pred, ref, BRATS2023, (1.0, 1.0, 1.0))[0]
    assert (wt.tp, wt.fp, wt.fn) == (1, 1, 0)
    assert wt.dice == pytest.approx(2 * 1008 / (1728 + 1008)) and wt.rq == pytest.approx(1 / 1.5)
