"""The model card's parts that depend only on their inputs: the data-and-terms text follows the
training cases' sources (BraTS 2018 alone keeps its text), medians, the per-case table with the fold
that held each case out."""
from __future__ import annotations

import json

import pytest

from glioseg.errors import InputError
from glioseg.inference.model_card import (BRATS_TERMS, _dice_table, case_source, dice_summary, intended_use,
                                          read_results, training_terms)

BRATS18 = [f"Brats18_TCIA0{i}_1" for i in range(20)]
BRATS21 = [f"BraTS2021_000{i:02d}" for i in range(7)]


def test_a_brats18_model_keeps_the_brats18_text():
    assert training_terms(BRATS18) == BRATS_TERMS
    assert "BraTS 2017/2018 (and so of MSD Task01) training" in intended_use(BRATS18)


def test_27_cases_of_two_releases_name_both_with_their_citations_and_terms():
    assert case_source("BraTS2021_00014") == "BraTS 2021" and case_source("Brats18_2013_3_1") == "BraTS 2018"
    text = training_terms(BRATS18 + BRATS21)
    assert text.startswith("The training images are 27 BraTS cases, 20 of the BraTS 2018 training set "
                           "(identical to BraTS 2017 training) and 7 of the RSNA-ASNR-MICCAI BraTS 2021 training set")
    for cite in ("arXiv:2107.02314", "doi:10.1109/TMI.2014.2377694", "doi:10.1038/sdata.2017.117", "arXiv:1811.02629"):
        assert text.count(cite) == 1, cite
    assert "CC BY-NC-SA 3.0" in text and "new in BraTS 2021" in text and "non-commercial" in text
    assert "BraTS 2017/2018 (and so of MSD Task01) training and BraTS 2021 training" in intended_use(BRATS18 + BRATS21)


def test_brats21_alone_has_no_brats2013_terms_and_unknown_cases_are_said():
    text = training_terms(BRATS21)
    assert "7 of the RSNA-ASNR-MICCAI BraTS 2021" in text and "2013" not in text and "arXiv:1811.02629" not in text
    mixed = training_terms(BRATS21 + ["phantom-1"])
    assert mixed.endswith("1 training case(s) come from no source glioseg recognises by name (phantom-1): "
                          "their terms are not stated here.")
    assert "does not record its training cases" in training_terms(None)


def _results(tmp_path, **extra):
    per_case = {"c1": 0.1, "c2": 0.5, "c3": 0.9, "c4": 1.0}
    dice = {r: {"mean": 0.625, "sd": 0.4, "n": 4, "per_case": per_case} for r in ("WT", "TC", "ET")}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"method": "m", "hardware": "h", "dice": dice, **extra}))
    return read_results(path)


def test_the_table_gives_median_and_the_fold_that_held_each_case_out(tmp_path):
    results = _results(tmp_path, held_out_by={"c1": "fold0", "c2": "fold1", "c3": "fold2", "c4": "fold0"})
    lines = _dice_table(results)
    assert "| WT | 0.625 | 0.400 | 0.700 | 4 |" in lines            # median of 0.1, 0.5, 0.9, 1.0
    assert "| case | held out by | WT | TC | ET |" in lines and "| c2 | fold1 | 0.500 | 0.500 | 0.500 |" in lines
    assert dice_summary(results)["ET"] == {"mean": 0.625, "sd": 0.4, "median": 0.7, "n": 4}
    plain = _dice_table(_results(tmp_path))
    assert "| c2 | 0.500 | 0.500 | 0.500 |" in plain


def test_an_unknown_results_key_is_refused(tmp_path):
    with pytest.raises(InputError, match="fold_of"):
        _results(tmp_path, fold_of={})
