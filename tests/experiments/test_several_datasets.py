"""An experiment over several datasets (the spec's ``data:`` a list, or ``--data A B``): folds stratified
by dataset where the site is unknown, each case's source in the plan and status, each dataset scored in
its own convention; one dataset exactly as before."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from glioseg.cli import main
from glioseg.data.phantom import write_msd_dataset
from glioseg.experiments.plan import load_plan, make_plan
from glioseg.experiments.runner import describe_plan
from glioseg.experiments.spec import load_spec

from .conftest import TINY_ARM

# make_plan's folds of the six phantoms (conftest.phantom_data) for k = 2 and 3, seeds 0 and 1, as
# written by glioseg before several datasets existed (main at 051a952): one dataset must keep them, or
# experiments already begun would continue on other folds
BEFORE = {
    2: {"0": {"Phantom_SITEA_001": 1, "Phantom_SITEA_004": 0, "Phantom_SITEB_002": 1, "Phantom_SITEB_005": 0,
              "Phantom_SITEC_006": 1, "Phantom_SITEC_003": 0},
        "1": {"Phantom_SITEA_004": 1, "Phantom_SITEA_001": 0, "Phantom_SITEB_005": 1, "Phantom_SITEB_002": 0,
              "Phantom_SITEC_006": 1, "Phantom_SITEC_003": 0}},
    3: {"0": {"Phantom_SITEA_001": 2, "Phantom_SITEA_004": 0, "Phantom_SITEB_002": 1, "Phantom_SITEB_005": 2,
              "Phantom_SITEC_006": 0, "Phantom_SITEC_003": 1},
        "1": {"Phantom_SITEA_004": 1, "Phantom_SITEA_001": 2, "Phantom_SITEB_005": 0, "Phantom_SITEB_002": 1,
              "Phantom_SITEC_006": 2, "Phantom_SITEC_003": 0}},
}


@pytest.fixture(scope="module")
def msd_data(tmp_path_factory) -> Path:
    """Four MSD-layout phantoms (labels 0/1/2/3, ids BRATS_001.., no site)."""
    root = tmp_path_factory.mktemp("experiment-msd") / "msd"
    write_msd_dataset(root, cases=4, seed=2, shape=(48, 48, 40))
    return root


@pytest.mark.parametrize("k", [2, 3])
def test_one_dataset_keeps_its_folds_strata_and_record(write_spec, phantom_data, tmp_path, k):
    plan = make_plan(load_spec(write_spec(folds={"k": k, "seed": 0}, seeds=[0, 1])), "cpu", tmp_path / "out")
    saved = plan.to_dict()
    assert json.dumps(saved["folds"]) == json.dumps(BEFORE[k])       # same folds, in the same order
    assert set(saved["strata"].values()) == {"SITEA/?", "SITEB/?", "SITEC/?"}
    assert sorted(saved) == ["budget", "folds", "not_run", "spec", "strata"] and plan.sources is None
    assert saved["spec"]["data"] == str(phantom_data.resolve())
    # --data with one dataset (a list of one on the command line) is that dataset, recorded as a path
    again = make_plan(load_spec(write_spec(folds={"k": k, "seed": 0}, seeds=[0, 1]), [str(phantom_data)]),
                      "cpu", tmp_path / "out")
    assert again.to_dict()["spec"] == saved["spec"]


def test_a_data_list_stratifies_unknown_sites_by_dataset_and_shows_sources(write_spec, phantom_data, msd_data,
                                                                          tmp_path):
    spec = load_spec(write_spec(data=[str(phantom_data), str(msd_data)], folds={"k": 2, "seed": 0}))
    assert spec.several and spec.data_paths() == [phantom_data, msd_data]
    plan = make_plan(spec, "cpu", tmp_path / "out")
    assert len(plan.strata) == 10
    assert {plan.strata[f"BRATS_00{i}"] for i in range(1, 5)} == {"msd/?"}      # no site: its dataset
    assert plan.strata["Phantom_SITEA_001"] == "SITEA/?"
    assert plan.sources["BRATS_001"] == "msd" and plan.sources["Phantom_SITEC_003"] == "raw"
    held_out = [sorted(c for c, f in plan.folds[0].items() if f == fold) for fold in (0, 1)]
    assert [sum(c.startswith("BRATS_") for c in cases) for cases in held_out] == [2, 2]   # spread evenly
    text = describe_plan(plan)
    assert f"data: 10 cases from 2 datasets: raw 6 ({phantom_data}), msd 4 ({msd_data})" in text
    assert "fold 0 holds out 5 (msd 2, raw 3): " in text and "BRATS_00" in text and "[msd]" in text
    assert plan.to_dict()["spec"]["data"] == [str(phantom_data.resolve()), str(msd_data.resolve())]


def test_two_formats_run_as_one_experiment_each_scored_in_its_own_labels(write_spec, phantom_data, msd_data,
                                                                        tmp_path, capsys):
    spec = write_spec(arms=[{"name": "small", "model": "segresnet", "model_options": {"init_filters": 8},
                             **TINY_ARM}], reference="small",
                      budgets={"cpu": {"steps": 2, "steps_per_epoch": 2, "device": "cpu", "workers": 0}},
                      evaluation={"window": "box", "checkpoint": "last", "bootstrap": 200})
    out = tmp_path / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["experiment", "run", str(spec), "--data", str(phantom_data), str(msd_data),
                     "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    plan = load_plan(out)
    cases = set()
    for fold in (0, 1):
        result = json.loads((out / "results" / "small" / f"fold{fold}-seed0.json").read_text())
        cases |= {r["case"] for r in result["rows"]}
        predictions = out / "runs" / "small" / f"fold{fold}-seed0" / "predictions"
        for case in result["test_cases"]:
            values = set(np.unique(np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj)).tolist())
            # written in the case's own dataset's convention: MSD 0..3, BraTS 0/1/2/4
            assert values <= ({0, 1, 2, 3} if plan.sources[case] == "msd" else {0, 1, 2, 4})
    assert cases == set(plan.strata) and len(cases) == 10
    capsys.readouterr()
    assert main(["experiment", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "data: 10 cases from 2 datasets: raw 6" in status and "BRATS_001 [msd]" in status
    assert "Phantom_SITEA_001 [raw]" in status
    report = (out / "report" / "tiny.md").read_text()
    assert "The cases come from 2 datasets: msd 4, raw 6; a case of unknown site is stratified by its dataset." \
        in report and "| msd/? |" in report
