"""The identity of the data a run trains on, recorded at its start and checked on ``--resume``.

A run resumed on other data used to re-preprocess that data into the run's cache and go on
training on it without a word (#23). The identity is what makes the cache: every case id with
the SHA-256 of each of its source files (by channel and ``label``), the label convention and the
preprocessing. It reads the same whether the run was given the raw dataset (hashed before
anything is rewritten) or a ready cache (each case's ``meta.json`` records its sources' hashes),
so moving from one to the other is not a difference. ``RUN/data.json`` holds it; ``--resume``
with anything else is refused, naming what differs, unless ``--allow-other-data`` says it is
meant (then the run goes on, says so, and records the new identity).

Of several datasets (:mod:`glioseg.data.sources`) it also records each case's dataset and the label
convention its file is read in (``sources``): a case that comes from another dataset, or whose
labels are read in another convention, is other data too. One dataset's identity has no
``sources`` and reads exactly as it always did.
"""
from __future__ import annotations

import logging
from pathlib import Path

from glioseg.data.cache import input_digests
from glioseg.data.sources import as_sources
from glioseg.errors import InputError
from glioseg.files import read_json, write_json
from glioseg.run_io import DATA

log = logging.getLogger(__name__)

RECORD = DATA   # the run folder's names are glioseg.run_io's
_SHOWN = 8   # differences listed in the message; the rest are counted


def identity(scheme: str, preprocess: dict, cases: dict[str, dict[str, str]],
             sources: dict[str, dict[str, str]] | None = None) -> dict:
    """``sources`` (several datasets only): case → {"dataset": its name, "labels": its file's convention}."""
    out = {"scheme": scheme, "preprocess": preprocess, "cases": {c: dict(sorted(r.items())) for c, r in
                                                                 sorted(cases.items())}}
    return out if sources is None else {**out, "sources": dict(sorted(sources.items()))}


def from_cache(cache) -> dict:
    """The identity of a complete cache: its cases' source hashes as each ``meta.json`` records them."""
    cases = {c: {role: entry["sha256"] for role, entry in cache.meta(c)["inputs"].items()} for c in cache.case_ids}
    sources = None
    if cache.case_sources is not None:
        labels = {d["name"]: d["scheme"] for d in cache.datasets}
        sources = {c: {"dataset": name, "labels": labels[name]} for c, name in cache.case_sources.items()}
    return identity(cache.scheme.name, cache.config, cases, sources)


def from_dataset(dataset, preprocess: dict) -> dict:
    """The identity of a raw dataset (or of several, :class:`~glioseg.data.sources.Sources`) about to be
    preprocessed with ``preprocess`` (hashes every file)."""
    data = as_sources(dataset)
    cases = {c.case_id: {role: entry["sha256"] for role, entry in input_digests(c).items()} for c in data.cases}
    sources = None if data.single else {
        c.case_id: {"dataset": name, "labels": d.scheme.name} for name, d in zip(data.names, data.datasets)
        for c in d.cases}
    return identity(data.scheme.name, preprocess, cases, sources)


def _listed(ids: list[str]) -> str:
    return ", ".join(ids[:_SHOWN]) + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def differences(saved: dict, now: dict) -> list[str]:
    """What differs between two identities, one phrase per difference (empty when the same)."""
    found = []
    before, after = saved.get("cases", {}), now["cases"]
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    if added:
        found.append(f"{len(added)} case(s) added: {_listed(added)}")
    if removed:
        found.append(f"{len(removed)} case(s) removed: {_listed(removed)}")
    for case in sorted(set(before) & set(after)):
        for role in sorted(set(before[case]) | set(after[case])):
            old, new = before[case].get(role), after[case].get(role)
            if old != new:
                found.append(f"{case} {role} file: SHA-256 {str(old)[:12]} then, {str(new)[:12]} now"
                             if old and new else f"{case} {role} file {'added' if new else 'removed'}")
    found += _source_differences(saved, now, set(before) & set(after))
    for key, what in (("scheme", "label convention"), ("preprocess", "preprocessing")):
        if saved.get(key) != now[key]:
            found.append(f"{what} {saved.get(key)!r} then, {now[key]!r} now")
    return found


def _source_of(ident: dict, case: str) -> dict:
    """The case's dataset (None for one dataset, which names none) and the convention its labels are read in."""
    return ident.get("sources", {}).get(case) or {"dataset": None, "labels": ident.get("scheme")}


def _source_differences(saved: dict, now: dict, cases: set[str]) -> list[str]:
    """Cases now from another dataset or read in another label convention. An identity without
    ``sources`` (one dataset) names no dataset: against it only a changed convention shows."""
    if "sources" not in saved and "sources" not in now:
        return []   # one dataset then and now: its scheme is compared as a whole
    found = []
    for case in sorted(cases):
        old, new = _source_of(saved, case), _source_of(now, case)
        if old["dataset"] and new["dataset"] and old["dataset"] != new["dataset"]:
            found.append(f"{case} from dataset {old['dataset']} then, {new['dataset']} now")
        if old.get("labels") and new.get("labels") and old["labels"] != new["labels"]:
            found.append(f"{case} labels read as {old['labels']} then, {new['labels']} now")
    return found


def check_resume(out: Path, now: dict, allow_other_data: bool) -> None:
    """Refuse to resume the run in ``out`` on data whose identity differs from the recorded one."""
    path = Path(out) / RECORD
    if not path.is_file():
        log.warning("%s: the run has no record of its data (%s; a run started before glioseg recorded it); "
                    "it resumes on the data given, which is recorded now", out, RECORD)
        return
    found = differences(read_json(path, "the run's data identity"), now)
    if not found:
        return
    shown = "; ".join(found[:_SHOWN]) + (f"; and {len(found) - _SHOWN} more differences" if len(found) > _SHOWN
                                         else "")
    if allow_other_data:
        log.warning("%s: resuming on other data than the run started on (--allow-other-data): %s", out, shown)
        return
    raise InputError(f"{out}: --resume on other data than the run started on ({path.name}): {shown}; give the "
                     "run's own data, or --allow-other-data if continuing on this data is meant")


def record(out: Path, now: dict) -> Path:
    return write_json(Path(out) / RECORD, now)
