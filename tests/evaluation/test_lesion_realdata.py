"""Lesion-wise scores on real BraTS cases equal the official scripts' (2023, 2024) and brats-evaluation's.

Predictions are the expert labels perturbed deterministically (``perturbed_label``): shifted, eroded,
a core component removed, edema grown, a false positive added; no model run is needed.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from glioseg.data.labels import get_scheme
from glioseg.evaluation.lesionwise import GENERATIONS, brats2023_labels, score_lesions
from glioseg.evaluation.panoptic import score_panoptic

from ._lesion_cases import perturbed_label
from .oracles import brats2023, brats2024
from .test_lesionwise import assert_same

# In the default run (CI included): issue #26 asks for equality on real cases in CI. Each test takes
# 4-12 s on the 2-core Xeon (22 s for the three), under the suite's 20 s "slow" line; one case keeps
# it so, and benchmarks/bench_lesion_metrics.py checks all 27 shared cases against the oracles.
pytestmark = [pytest.mark.realdata]
CASES = ("brats21/BraTS2021_00014",)
BRATS = get_scheme("brats")


@pytest.fixture(scope="module", params=CASES)
def real_case(request, shared_data):
    folder = shared_data / request.param
    label = np.asanyarray(nib.load(str(folder / f"{folder.name}_seg.nii.gz")).dataobj).astype(np.uint8)
    pred = perturbed_label(label, BRATS.regions, BRATS.enhancing, BRATS.edema)
    return label, pred


@pytest.mark.parametrize("generation", ["lesion-2023", "lesion-2024"])
def test_real_cases_equal_the_official_script(real_case, generation):
    label, pred = real_case
    oracle = {"lesion-2023": brats2023.evaluate, "lesion-2024": brats2024.evaluate}[generation]
    rules = GENERATIONS[generation]
    expected = oracle(brats2023_labels(pred, BRATS), brats2023_labels(label, BRATS))
    assert_same(score_lesions(pred, label, BRATS, (1.0, 1.0, 1.0), rules), expected, rules.penalty)


def test_real_cases_equal_brats_evaluation(real_case):
    pytest.importorskip("brats_evaluation", reason="the test extras install brats-evaluation")
    from .test_panoptic import assert_same as assert_same_2025, official
    from panoptica import Panoptica_Evaluator
    import brats_evaluation

    label, pred = real_case
    evaluator = Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("gli")))
    expected = official(evaluator, brats2023_labels(pred, BRATS), brats2023_labels(label, BRATS), (1.0, 1.0, 1.0))
    assert_same_2025(score_panoptic(pred, label, BRATS, (1.0, 1.0, 1.0)), expected)
