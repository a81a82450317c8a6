"""``glioseg experiment`` end to end on phantoms: run, status, report; kill and continue (also from the
result files alone, and with parallel workers); a folder in use; Slurm via submitit."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import glioseg
from glioseg.cli import main
from glioseg.experiments.postprocess import grid
from glioseg.inference.postprocess import read_postprocess
from glioseg.experiments.runner import LOCK_FILE
from glioseg.files import exclusive_lock
from glioseg import run_io
from glioseg.run_io import RunFiles

from .conftest import TINY_ARM, TINY_SPEC

SRC = Path(glioseg.__file__).resolve().parents[1]
RUNS = ("small/fold0-seed0", "small/fold1-seed0", "unet/fold0-seed0", "unet/fold1-seed0")
# result fields that measure time or memory: they differ between identical runs
MEASURED = ("cost",)


def _spec(folder: Path, data: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPEC, "data": str(data), **changes}, sort_keys=False))
    return path


def _scores(out: Path) -> dict[str, list[dict]]:
    """Per run: the per-case metric rows and the validation curve without its seconds."""
    scores = {}
    for key in RUNS:
        result = json.loads((out / "results" / f"{key}.json").read_text())
        scores[key] = [result["rows"], [{k: v for k, v in r.items() if k != "seconds"} for r in result["curve"]]]
    return scores


@pytest.fixture(scope="module")
def finished(phantom_data, tmp_path_factory) -> Path:
    """The tiny experiment run once, uninterrupted, through the CLI in this process."""
    folder = tmp_path_factory.mktemp("experiment")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["experiment", "run", str(_spec(folder, phantom_data)), "--out", str(folder / "out")]) == 0
    finally:
        torch.set_num_threads(before)
    return folder / "out"


def test_run_writes_run_folders_results_and_the_report(finished, phantom_data):
    for key in RUNS:
        run = finished / "runs" / key
        assert RunFiles(run).best.is_file() and RunFiles(run).metrics.is_file()
        split = RunFiles(run).read_split()
        assert not set(split["test"]) & set(split["train"] + split["val"])
        result = json.loads((finished / "results" / f"{key}.json").read_text())
        assert sorted({r["case"] for r in result["rows"]}) == split["test"]
        assert {r["region"] for r in result["rows"]} == {"WT", "TC", "ET"}
        cost = result["cost"]
        assert cost["params"] > 0 and cost["flops"] > 0 and cost["steps"] == 4 and cost["s_per_step"] > 0
        assert cost["peak_mib"] > 0 and result["precision"]["precision"] == "fp32"
        assert (finished / "results" / f"{key}.csv").read_text().startswith("arm,fold,seed,case,region,dice")
    # each case is held out exactly once per seed, in one of the two folds
    for arm in ("small", "unet"):
        cases = [c for f in (0, 1) for c in json.loads(
            (finished / "results" / arm / f"fold{f}-seed0.json").read_text())["test_cases"]]
        assert sorted(cases) == sorted(p.name for p in phantom_data.iterdir() if p.is_dir())
    report = (finished / "report" / "tiny.md").read_text()
    assert "unet vs small: ΔWT" in report and "## Cost per arm" in report
    figures = ("dice_boxplots", "paired_differences", "dice_vs_cost", "validation_curves")
    for name in figures:
        assert f"![{name.replace('_', ' ')}](tiny-{name}.png)" in report
        assert (finished / "report" / f"tiny-{name}.png").stat().st_size > 1000
    html = (finished / "report" / "tiny.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "unet vs small" in html


def test_status_and_a_second_run_skip_what_is_done(finished, capsys):
    assert main(["experiment", "status", str(finished)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split() for ln in lines if ln.startswith(("small", "unet"))] == [
        ["small", "0", "0", "0", "2", "0"], ["unet", "0", "0", "0", "2", "0"]]
    spec = finished.parent / "spec.yaml"
    stamps = {k: (finished / "results" / f"{k}.json").stat().st_mtime_ns for k in RUNS}
    assert main(["experiment", "run", str(spec), "--out", str(finished)]) == 0
    assert stamps == {k: (finished / "results" / f"{k}.json").stat().st_mtime_ns for k in RUNS}


def test_a_folder_of_another_experiment_is_refused(finished, phantom_data, tmp_path, caplog):
    other = _spec(tmp_path, phantom_data, seeds=[5])
    assert main(["experiment", "run", str(other), "--out", str(finished)]) == 2
    assert "holds an experiment with another spec" in caplog.text


def test_a_spec_that_adds_an_arm_extends_the_experiment(finished, phantom_data, tmp_path, caplog, one_thread):
    """The finished arms keep their results; only the new arm's runs train. Changing an arm that has
    runs is still refused."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    stamps = {k: (out / "results" / f"{k}.json").stat().st_mtime_ns for k in RUNS}
    wider = {"name": "wider", "model": "segresnet", "model_options": {"init_filters": 16}, **TINY_ARM}
    grown = _spec(tmp_path / "grown", phantom_data, arms=[*TINY_SPEC["arms"], wider],
                  description="three tiny arms on phantoms")
    with caplog.at_level(logging.INFO):
        assert main(["experiment", "run", str(grown), "--out", str(out), "--max-runs", "1"]) == 0
    assert "adds arm(s) wider to the experiment" in caplog.text
    assert stamps == {k: (out / "results" / f"{k}.json").stat().st_mtime_ns for k in RUNS}
    assert sorted(p.name for p in (out / "results" / "wider").glob("*.json")) == ["fold0-seed0.json"]
    changed = [{**TINY_SPEC["arms"][0], "model_options": {"init_filters": 16}}, TINY_SPEC["arms"][1], wider]
    caplog.clear()
    assert main(["experiment", "run", str(_spec(tmp_path / "changed", phantom_data, arms=changed)),
                 "--out", str(out)]) == 2
    assert "2 finished runs were trained with settings" in caplog.text and "init_filters" in caplog.text


def test_a_killed_experiment_continues_to_the_same_results(finished, phantom_data, tmp_path, one_thread):
    """The killed run, the resumed one and the uninterrupted one all compute with one torch thread."""
    spec, out = _spec(tmp_path, phantom_data), tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "glioseg", "experiment", "run", str(spec), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "results" / "small" / "fold0-seed0.json"
    deadline = time.monotonic() + 120
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)   # somewhere in the second run: training, checkpoint or prediction
    proc.wait()
    assert first.is_file()
    assert not (out / "results" / "unet" / "fold1-seed0.json").exists()
    assert main(["experiment", "run", str(spec), "--out", str(out)]) == 0
    assert _scores(out) == _scores(finished)


def test_minutes_budget_stops_a_run_and_evaluates_it(phantom_data, tmp_path):
    budgets = {"cpu": {"minutes": 1e-9, "max_epochs": 3, "steps_per_epoch": 2, "device": "cpu", "workers": 0}}
    spec = _spec(tmp_path, phantom_data, budgets=budgets, folds={"k": 2, "seed": 0})
    out = tmp_path / "out"
    assert main(["experiment", "run", str(spec), "--out", str(out)]) == 0
    result = json.loads((out / "results" / "small" / "fold0-seed0.json").read_text())
    assert result["budget_stop"]["step"] == 1 and result["cost"]["steps"] == 1
    assert result["checkpoint"] == "last"     # stopped before any validation: no best.pt


def test_slurm_executor_runs_the_jobs_through_submitit(finished, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "results" / "unet" / "fold1-seed0.json").unlink()     # this run is evaluated again
    spec = yaml.safe_load((finished.parent / "spec.yaml").read_text())
    spec["slurm"] = {"cluster": "local", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["experiment", "run", str(path), "--out", str(out), "--executor", "slurm"]) == 0
    assert list((out / "slurm").glob("*_result.pkl"))     # the job went through submitit
    assert _scores(out) == _scores(finished)


def test_the_report_needs_only_the_committable_result_files(finished, tmp_path, capsys):
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(finished / "experiment.json", kept)
    shutil.copytree(finished / "results", kept / "results")
    assert main(["experiment", "report", str(kept), "--out", str(tmp_path / "docs")]) == 0
    assert (tmp_path / "docs" / "tiny.md").read_text().split("## Figures")[0].replace(str(kept), "") == \
        (finished / "report" / "tiny.md").read_text().split("## Figures")[0].replace(str(finished), "")
    assert "tiny.md" in capsys.readouterr().out


def test_a_report_before_any_run_finished_says_so(finished, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(finished / "experiment.json", empty)
    assert main(["experiment", "report", str(empty)]) == 0
    text = (empty / "report" / "tiny.md").read_text()
    assert "0 of 4 runs finished" in text and "## Figures" not in text


def test_an_experiment_continues_from_its_committed_result_files(finished, tmp_path, one_thread):
    """On another machine the run folders are gone; the result files say which runs are done."""
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(finished / "experiment.json", kept)
    shutil.copytree(finished / "results", kept / "results")
    (kept / "results" / "unet" / "fold1-seed0.json").unlink()
    spec = finished.parent / "spec.yaml"
    assert main(["experiment", "run", str(spec), "--out", str(kept)]) == 0
    assert sorted(p.relative_to(kept / "runs").as_posix() for p in (kept / "runs").glob("*/*")) == \
        ["unet/fold1-seed0"]
    assert _scores(kept) == _scores(finished)


def test_max_runs_starts_that_many_runs_begun_ones_first(finished, tmp_path, one_thread, capsys):
    """``--max-runs`` for a machine lent for a while: the run already trained is finished first."""
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(finished / "experiment.json", kept)
    shutil.copytree(finished / "results", kept / "results")
    for key in ("small/fold0-seed0", "unet/fold1-seed0"):
        (kept / "results" / f"{key}.json").unlink()
    shutil.copytree(finished / "runs" / "unet" / "fold1-seed0", kept / "runs" / "unet" / "fold1-seed0")
    spec = finished.parent / "spec.yaml"
    assert main(["experiment", "run", str(spec), "--out", str(kept), "--max-runs", "1"]) == 0
    assert (kept / "results" / "unet" / "fold1-seed0.json").is_file()
    assert not (kept / "results" / "small" / "fold0-seed0.json").exists()
    assert not (kept / "runs" / "small").exists()
    assert "1 of 4 runs left: run the same command again" in capsys.readouterr().out
    assert main(["experiment", "run", str(spec), "--out", str(kept), "--max-runs", "0"]) == 2


def test_a_folder_in_use_is_refused_before_any_work(finished, tmp_path, caplog):
    spec = finished.parent / "spec.yaml"
    with exclusive_lock(finished / LOCK_FILE, "a test"):
        assert main(["experiment", "run", str(spec), "--out", str(finished)]) == 2
    assert f"experiment folder {finished} is in use by another process" in caplog.text


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies no longer do: a container's init may not reap)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _start_parallel(spec: Path, out: Path) -> subprocess.Popen:
    """``experiment run --jobs 2`` in its own process group, returned once a worker is training."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "glioseg", "experiment", "run", str(spec), "--out", str(out),
                             "--jobs", "2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(out.glob(f"runs/*/*/{run_io.STEP_TIMES}")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the experiment ended before any worker trained"
    return proc


def _wait_until_gone(pgid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _alive_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive_in_group(pgid)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from Linux's /proc")
def test_stopping_a_parallel_experiment_stops_its_workers(phantom_data, tmp_path):
    """``kill PID`` terminates the workers with the parent, and the runs not started stay undone;
    ``kill -9 PID`` leaves workers that stop by themselves. Each run here trains for minutes, so a
    worker that outlived its parent would still be found."""
    budgets = {"cpu": {"steps": 4000, "steps_per_epoch": 2000, "val_every": 1, "device": "cpu", "workers": 0}}
    spec, out = _spec(tmp_path, phantom_data, budgets=budgets), tmp_path / "out"
    groups = []
    try:
        proc = _start_parallel(spec, out)
        groups.append(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert _wait_until_gone(proc.pid, 10) == []
        assert not list(out.glob("results/*/*.json"))
        proc = _start_parallel(spec, out)
        groups.append(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_until_gone(proc.pid, 10) == []
    finally:   # a failure must not leave training processes behind
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def test_a_damaged_experiment_file_is_named_not_a_crash(finished, tmp_path, caplog):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "experiment.json").write_text('{"spec": ')
    assert main(["experiment", "run", str(finished.parent / "spec.yaml"), "--out", str(damaged)]) == 2
    assert f"{damaged / 'experiment.json'}: cannot read an experiment plan" in caplog.text


def test_a_report_over_two_machines_gives_times_per_machine(finished, tmp_path):
    """An experiment continued elsewhere: times are cited per device, never averaged across them."""
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(finished / "experiment.json", kept)
    shutil.copytree(finished / "results", kept / "results")
    moved = kept / "results" / "unet" / "fold1-seed0.json"
    result = json.loads(moved.read_text())
    assert result["cost"]["cpus"] and all(isinstance(cpu, str) and cpu for cpu in result["cost"]["cpus"])
    result["precision"] = None
    result["cost"].update(device_description="cpu: OTHER", cpus=["OTHER CPU"], s_per_step=99.0, train_wall_s=9999.0)
    moved.write_text(json.dumps(result))
    assert main(["experiment", "report", str(kept), "--out", str(tmp_path / "docs")]) == 0
    text = (tmp_path / "docs" / "tiny.md").read_text()
    assert "; [2] cpu: OTHER on OTHER CPU (1 runs)" in text and "Runs timed on [1] " in text
    unet = next(line for line in text.splitlines() if line.startswith("| unet | unet3d |"))
    assert "99.00 [2]" in unet and "9999 [2]" in unet and "[1]" in unet
    small = next(line for line in text.splitlines() if line.startswith("| small | segresnet |"))
    assert "[2]" not in small


def test_one_arm_cross_validates_a_recipe_without_comparisons(write_spec, tmp_path, one_thread, phantom_data):
    # a release measured the way it ships: one arm, all training cases (no validation split), the
    # last checkpoint scored on the held-out fold, snapshots kept for a learning curve
    arm = {**TINY_SPEC["arms"][0], "overrides": {**TINY_ARM["overrides"], "val_fraction": 0.0,
                                                  "snapshot_every": 2}}
    spec = write_spec(arms=[arm], evaluation={"window": "box", "checkpoint": "last", "bootstrap": 200})
    out = tmp_path / "out"
    assert main(["experiment", "run", str(spec), "--out", str(out)]) == 0
    for fold in (0, 1):
        run = RunFiles(out / "runs" / f"small/fold{fold}-seed0")
        assert run.read_split()["val"] == [] and not run.best.exists()
        assert list(run.snapshots()) == [2, 4]
        result = json.loads((out / "results" / f"small/fold{fold}-seed0.json").read_text())
        assert {r["case"] for r in result["rows"]} == set(run.read_split()["test"])
    report = (out / "report" / "tiny.md").read_text()
    assert " vs small" not in report and "## Cost per arm" in report and "One arm: nothing to compare" in report
    # the post-processing choice scores the runs' own held-out predictions: without post-processing
    # each case's Dice is the one the experiment's result files hold
    assert main(["experiment", "postprocess", str(out)]) == 0
    choice = json.loads((out / "results" / "postprocess-small.json").read_text())
    held = {row["case"]: row for fold in (0, 1) for row in
            json.loads((out / "results" / f"small/fold{fold}-seed0.json").read_text())["rows"] if row["region"] == "WT"}
    assert {r["case"] for r in choice["per_case"]} == set(held)
    for row in choice["per_case"]:
        assert row["none"][0] == pytest.approx(held[row["case"]]["dice"])
    assert set(choice["nested"]["choices"]) == {"0", "1"} and len(choice["table"]) == len(grid())
    # with thresholds: the runs predict their held-out probabilities; at 0.5 without rules they are
    # the network's labels again, and the choice is a post-processing a release can carry
    assert main(["experiment", "postprocess", str(out), "--thresholds", "WT", "TC", "ET"]) == 0
    choice = json.loads((out / "results" / "postprocess-small.json").read_text())
    for row in choice["per_case"]:
        assert row["none"][0] == pytest.approx(held[row["case"]]["dice"], abs=1e-6)
    assert [r["threshold"] for r in choice["threshold_table"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert len(choice["chosen"]["thresholds"]) == 3 and set(choice["nested"]["choices"]) == {"0", "1"}
    assert read_postprocess(out / "results" / "postprocess-small.json").to_dict() == choice["recommended"]
    assert len(list((out / "runs" / "small" / "fold0-seed0" / "held-out-probabilities" / "probabilities").glob("*.nii.gz"))) == 3
    # with flips: chosen on the mean over the 8 flips (what predict --tta writes, in a folder of its
    # own); the baseline stays the labels without flips, the flips alone are scored beside it
    assert main(["experiment", "postprocess", str(out), "--tta"]) == 0
    flipped = json.loads((out / "results" / "postprocess-small-tta.json").read_text())
    assert flipped["tta"] and "thresholds" not in flipped["chosen"]          # no region named: 0.5 kept
    assert {r["case"]: r["none"] for r in flipped["per_case"]} == {r["case"]: r["none"] for r in choice["per_case"]}
    assert set(flipped["tta_alone"]) == {"WT", "TC", "ET", "mean"}
    run = RunFiles(out / "runs" / "small" / "fold0-seed0")
    case = sorted(run.read_split()["test"])[0]
    assert main(["predict", str(phantom_data / case), "--checkpoint", str(run.checkpoint("last")), "--tta",
                 "--precision", "fp32", "--postprocess", "none", "--probabilities", "--out", str(tmp_path / "tta")]) == 0
    folder = run.path / "held-out-probabilities-tta"
    direct = nib.load(tmp_path / "tta" / "probabilities" / f"{case}.nii.gz").get_fdata()
    assert np.allclose(nib.load(folder / "probabilities" / f"{case}.nii.gz").get_fdata(), direct, atol=1e-6)
    assert not np.allclose(nib.load(run.path / "held-out-probabilities" / "probabilities" / f"{case}.nii.gz").get_fdata(),
                           direct, atol=1e-4)
    # the learning curve: the snapshot at step 2 predicted anew, the one at step 4 is the run's own
    # evaluation (the same Dice as its result file)
    assert main(["experiment", "curve", str(out)]) == 0
    curve = json.loads((out / "results" / "learning-curve-small.json").read_text())
    assert sorted({r["step"] for r in curve["rows"]}) == [2, 4]
    assert {(r["case"], r["region"]): r["dice"] for r in curve["rows"] if r["step"] == 4} == {
        (r["case"], r["region"]): r["dice"] for fold in (0, 1) for r in
        json.loads((out / "results" / f"small/fold{fold}-seed0.json").read_text())["rows"]}
    assert (out / "runs" / "small" / "fold0-seed0" / "snapshot-predictions" / "step-000002").is_dir()
    assert (out / "report" / "learning-curve-small.png").stat().st_size > 1000
