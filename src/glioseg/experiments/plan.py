"""The runs of an experiment, where they live, and how far each has got.

One run per (arm, fold, seed): an ordinary ``glioseg train`` run folder at
``DIR/runs/<arm>/fold<k>-seed<s>/`` whose ``split.json`` is written before training (the fold's
cases, held-out ``test`` cases included), and its small result file at
``DIR/results/<arm>/fold<k>-seed<s>.json``. ``DIR/experiment.json`` records the spec, the budget,
the fold assignments and the precision verdicts; a re-run with another spec or budget into the
same folder is refused, so results never mix two experiments; a spec that only adds arms (the others
unchanged) extends the study.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from glioseg.data.sources import discover_all
from glioseg.errors import InputError
from glioseg.experiments.folds import assign_folds, balance, fold_split, read_grades, stratum_of
from glioseg.experiments.resolve import Resolved, precision_verdicts, resolve
from glioseg.experiments.spec import ExperimentSpec, SpecError, slug, spec_dict, spec_from_dict
from glioseg.files import read_json, write_text_atomic
from glioseg.run_io import RunFiles

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
STATES = ("pending", "partial", "trained", "done", "not run")


def is_trained(run_dir: Path) -> bool:
    """The trainer finished the run (its summary is written) or the minutes budget stopped it."""
    files = RunFiles(run_dir)
    return files.finished() or files.budget_stopped()


@dataclass(frozen=True)
class Run:
    arm: str
    fold: int
    seed: int

    @property
    def key(self) -> str:
        return f"{slug(self.arm)}/fold{self.fold}-seed{self.seed}"


@dataclass
class Plan:
    resolved: Resolved
    out: Path
    strata: dict[str, str]                  # case → "site/grade"
    folds: dict[int, dict[str, int]]        # training seed → case → fold
    not_run: dict[str, str] = field(default_factory=dict)   # arm → why it cannot run here
    sources: dict[str, str] | None = None   # case → its dataset's name (several datasets only)

    @property
    def spec(self) -> ExperimentSpec:
        return self.resolved.spec

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def runs(self) -> list[Run]:
        return [Run(a, k, s) for a in self.resolved.arm_names for s in self.spec.seeds
                for k in range(self.spec.folds.k)]

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / run.key

    def result_path(self, run: Run) -> Path:
        return self.out / "results" / f"{run.key}.json"

    def split(self, run: Run) -> dict:
        val_fraction = self.resolved.config(run.arm, run.seed).val_fraction
        return fold_split(self.folds[run.seed], run.fold, run.seed, val_fraction,
                          self.spec.arm(run.arm).train_cases, self.strata)

    def status(self, run: Run) -> str:
        """``done`` (result file written), ``trained`` (to evaluate), ``partial`` (to resume),
        ``pending`` (to start) or ``not run`` (its precision cannot run on this machine)."""
        folder = self.run_dir(run)
        if run.arm in self.not_run:
            return "not run"
        if self.result_path(run).is_file():
            return "done"
        if is_trained(folder):
            return "trained"
        return "partial" if RunFiles(folder).started() else "pending"

    def balance(self, seed: int) -> dict[str, list[int]]:
        return balance(self.folds[seed], self.strata, self.spec.folds.k)

    def by_source(self, cases) -> dict[str, int]:
        """Cases per dataset (several datasets; empty for one)."""
        counts: dict[str, int] = {}
        for case in sorted(cases):
            if self.sources:
                counts[self.sources[case]] = counts.get(self.sources[case], 0) + 1
        return counts

    def to_dict(self) -> dict:
        saved = {"spec": spec_dict(self.spec), "budget": self.resolved.budget_name, "strata": self.strata,
                 "folds": {str(s): a for s, a in self.folds.items()}, "not_run": self.not_run}
        return saved if self.sources is None else {**saved, "sources": self.sources}


def _strata(spec: ExperimentSpec) -> tuple[dict[str, str], dict[str, str] | None]:
    """Case → stratum, and case → dataset name (None for one dataset)."""
    for data in spec.data_paths():
        if not data.exists():
            raise SpecError(spec.source, f"data {data} does not exist (the spec's data, or --data)")
    sources = discover_all(spec.data_paths())
    grades = read_grades(spec.grades_path()) if spec.grades_path() else dict(spec.folds.grades or {})
    for dataset in sources.datasets:
        unlabelled = sum(c.label is None for c in dataset.cases)
        if unlabelled:
            raise SpecError(spec.source, f"{dataset.root}: {unlabelled} cases have no reference "
                                         "label; every case of an experiment is scored")
    named = None if sources.single else {c.case_id: sources.source_of(c.case_id) for c in sources.cases}
    strata = {c.case_id: stratum_of(c.site, grades.get(c.case_id), named and named[c.case_id])
              for c in sources.cases}
    return strata, named


def make_plan(spec: ExperimentSpec, budget_name: str, out: Path) -> Plan:
    """Check the whole spec (settings, data, folds, precisions) before anything trains."""
    resolved = resolve(spec, budget_name)
    strata, sources = _strata(spec)
    if spec.folds.k > len(strata):
        where = ", ".join(map(str, spec.data_paths()))
        raise SpecError(spec.source, f"folds.k = {spec.folds.k} is more folds than the {len(strata)} cases of "
                                     f"{where}")
    folds = {s: assign_folds(strata, spec.folds.k, (spec.folds.seed, s)) for s in spec.seeds}
    _check_train_cases(spec, folds)
    return Plan(resolved, Path(out), strata, folds, precision_verdicts(resolved), sources)


def _check_train_cases(spec: ExperimentSpec, folds: dict[int, dict[str, int]]) -> None:
    """An arm's ``train_cases`` must fit the smallest fold's training cases (before any training)."""
    fewest = min(sum(f != k for f in assignment.values()) for assignment in folds.values()
                 for k in range(spec.folds.k))
    for arm in spec.arms:
        if arm.train_cases is not None and arm.train_cases > fewest:
            raise SpecError(spec.source, f"arm {arm.name!r}: train_cases {arm.train_cases} is more than the "
                                         f"{fewest} training cases of the smallest fold")


def _what(spec: dict) -> dict:
    """What a spec says the runs are: not how they execute (slurm) nor its prose (descriptions)."""
    out = {k: v for k, v in spec.items() if k not in ("slurm", "description", "arms")}
    if isinstance(out.get("budgets"), dict):
        out["budgets"] = {name: {k: v for k, v in b.items() if k != "description"} if isinstance(b, dict) else b
                          for name, b in out["budgets"].items()}
    return out


def _arm(arm: dict) -> dict:
    # prose aside; a setting left at None equals one an older experiment.json did not have yet
    return {k: v for k, v in arm.items() if k != "description" and v is not None}


def added_arms(old: dict, new: dict) -> list[str]:
    """The arms ``new`` adds to the experiment saved as ``old`` (both ``experiment.json`` dicts);
    :class:`ValueError` naming what else changed. Adding an arm leaves every finished run valid (same
    data, folds, budget, and the same settings for every arm it already had), so a study can grow."""
    changed = ["spec"] if _what(old["spec"]) != _what(new["spec"]) else []
    changed += [k for k in ("budget", "folds") if old.get(k) != new[k]]
    old_arms = {a["name"]: _arm(a) for a in old["spec"]["arms"]}
    new_arms = {a["name"]: _arm(a) for a in new["spec"]["arms"]}
    altered = sorted(n for n in old_arms if old_arms[n] != new_arms.get(n))
    if altered and "spec" not in changed:
        changed.append(f"arm(s) {', '.join(altered)} (changed or removed)")
    if changed:
        raise ValueError(" and ".join(changed))
    return [n for n in new_arms if n not in old_arms]


def save_plan(plan: Plan, **about) -> None:
    """Write ``experiment.json`` (with ``about``: the command, the machine). An experiment folder
    holding another spec, budget or folds is an error; a spec that only adds arms extends it."""
    path = plan.out / EXPERIMENT_FILE
    new = {**plan.to_dict(), **about}
    if path.is_file():
        try:
            added = added_arms(read_json(path, "an experiment plan"), new)
        except ValueError as e:
            raise SpecError(str(path), f"this folder holds an experiment with another {e}; continue it with its "
                                       "own spec and --budget (a spec may add arms), or use another --out") from None
        if added:
            log.info("%s: adds arm(s) %s to the experiment; the finished runs of the others stay",
                     plan.out, ", ".join(added))
    plan.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(new, indent=2))


def saved_command(out: Path) -> str | None:
    """The command line recorded in ``DIR/experiment.json`` by the latest ``glioseg experiment run``."""
    path = Path(out) / EXPERIMENT_FILE
    return read_json(path, "an experiment plan").get("command") if path.is_file() else None


def load_plan(out: Path) -> Plan:
    """The plan recorded in ``DIR/experiment.json`` (no data access: status and report use it)."""
    path = Path(out) / EXPERIMENT_FILE
    if not path.is_file():
        raise InputError(f"{out}: not an experiment folder ({EXPERIMENT_FILE} is missing); "
                         "start one with glioseg experiment run SPEC --out DIR")
    saved = read_json(path, "an experiment plan")
    spec = spec_from_dict(saved["spec"], str(path), ".")
    resolved = resolve(spec, saved["budget"])
    folds = {int(s): a for s, a in saved["folds"].items()}
    return Plan(resolved, Path(out), saved["strata"], folds, saved.get("not_run", {}), saved.get("sources"))
