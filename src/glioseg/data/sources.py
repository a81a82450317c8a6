"""Several datasets as one training set: each case keeps its dataset, its site and its labels' convention.

``glioseg verify / preprocess / train / experiment / evaluate`` take one or more datasets. Each is found by
:func:`glioseg.data.formats.discover` on its own (its layout detected, or the ``--format`` given),
so a BraTS 2018 folder, an MSD Task01 folder and a BraTS 2023 folder can be used together. Their
cases form one collection, :class:`Sources`:

- case ids must be unique across the datasets (they name cache folders and predictions): a
  collision is an error naming both files before any work;
- a case's *source* is its dataset's name (the folder's name, or the manifest's stem), recorded
  in the cache and in a run's ``data.json``; the experiment folds stratify a case without a known
  site by it;
- the cache holds one label convention, :meth:`Sources.scheme`: the datasets' own when they share
  one (one dataset: exactly as before), else :data:`CANONICAL` (BraTS 2017-2021 values), each case's
  labels converted through the WT / TC / ET regions when it is preprocessed
  (:func:`glioseg.data.labels.convert_labels`).

One dataset is a :class:`Sources` of one, and everything it writes is what it wrote before.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from glioseg.data.formats import Case, Dataset, discover
from glioseg.data.labels import LabelScheme, get_scheme
from glioseg.errors import InputError

log = logging.getLogger(__name__)

CANONICAL = "brats"   # the label convention of a cache over datasets whose conventions differ


def dataset_name(root: Path) -> str:
    """What a dataset is called in tables, strata and records: its folder's name (a manifest: its stem)."""
    root = Path(root)
    return root.stem if root.is_file() else root.resolve().name


def dataset_names(roots: list[Path]) -> tuple[str, ...]:
    """One distinct name per dataset; two folders of one name (``a/train``, ``b/train``) get their
    paths as given instead."""
    names = [dataset_name(r) for r in roots]
    return tuple(n if names.count(n) == 1 else str(r) for n, r in zip(names, roots))


@dataclass(frozen=True)
class Sources:
    """The datasets of one command line, in the order given, with their names."""

    datasets: tuple[Dataset, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if not self.datasets or len(self.names) != len(self.datasets):
            raise ValueError("Sources needs one name per dataset and at least one dataset")
        _check_unique_ids(self)
        channels = {d.channels for d in self.datasets}
        if len(channels) > 1:
            raise InputError(f"the datasets name different channels: {sorted(channels)}; expected the same")

    @property
    def single(self) -> bool:
        return len(self.datasets) == 1

    @property
    def channels(self) -> tuple[str, ...]:
        return self.datasets[0].channels

    @property
    def roots(self) -> tuple[Path, ...]:
        return tuple(d.root for d in self.datasets)

    @property
    def cases(self) -> tuple[Case, ...]:
        return tuple(c for d in self.datasets for c in d.cases)

    @property
    def scheme(self) -> LabelScheme:
        """The cache's label convention: the datasets' own when they share one, else :data:`CANONICAL`."""
        names = {d.scheme.name for d in self.datasets}
        return self.datasets[0].scheme if len(names) == 1 else get_scheme(CANONICAL)

    def pairs(self):
        """(dataset, case) of every case, in dataset order."""
        return [(d, c) for d in self.datasets for c in d.cases]

    def dataset_of(self, case_id: str) -> Dataset:
        return self.datasets[self._index[case_id]]

    def source_of(self, case_id: str) -> str:
        """The name of the case's dataset."""
        return self.names[self._index[case_id]]

    def labels_from(self, case_id: str) -> str | None:
        """The convention the case's labels are converted from in the cache; None when kept as they are."""
        own = self.dataset_of(case_id).scheme.name
        return None if own == self.scheme.name else own

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c.case_id: i for i, d in enumerate(self.datasets) for c in d.cases}

    def describe(self) -> str:
        """``brats18 (20 cases, brats labels), brats21 (7 cases, brats labels)``."""
        return ", ".join(f"{n} ({len(d.cases)} cases, {d.format}, {d.scheme.name} labels)"
                         for n, d in zip(self.names, self.datasets))

    def index_entry(self) -> dict:
        """What a cache's ``cache.json`` and a run's ``data.json`` record of several datasets."""
        return {"datasets": [{"name": n, "root": str(d.root), "format": d.format, "scheme": d.scheme.name,
                              "cases": len(d.cases)} for n, d in zip(self.names, self.datasets)],
                "case_sources": {c.case_id: n for n, d in zip(self.names, self.datasets) for c in d.cases}}


def _where(dataset: Dataset, case: Case) -> str:
    files = case.files()
    return str(files[0].parent if files else dataset.root / case.case_id)


def _check_unique_ids(sources: Sources) -> None:
    """Case ids name cache folders and predictions: two datasets with one id is an error naming both."""
    seen: dict[str, tuple[str, Dataset, Case]] = {}
    clashes = []
    for name, dataset in zip(sources.names, sources.datasets):
        for case in dataset.cases:
            if case.case_id in seen:
                other_name, other, first = seen[case.case_id]
                clashes.append(f"{case.case_id} in {other_name} ({_where(other, first)}) and in "
                               f"{'it again' if other_name == name else name} ({_where(dataset, case)})")
            else:
                seen[case.case_id] = (name, dataset, case)
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise InputError(f"case ids occur in more than one dataset: {shown}; case ids name cache folders and "
                         "predictions, so each must be unique across the datasets (rename the cases of one)")


def as_paths(data) -> list[Path]:
    """``--data`` as a list of paths: one path (a string or ``Path``) or several."""
    return [Path(p) for p in ([data] if isinstance(data, (str, Path)) else data)]


def discover_all(paths, format: str = "auto", *, strict: bool = True) -> Sources:
    """Every dataset of ``paths`` (one or more folders or manifests), each found with its own layout
    (``format`` "auto" detects each one's); case ids are checked unique across them before any work."""
    roots = as_paths(paths)
    if not roots:
        raise InputError("no dataset given")
    resolved = [r.resolve() for r in roots]
    repeated = sorted({str(r) for r, x in zip(roots, resolved) if resolved.count(x) > 1})
    if repeated:
        raise InputError(f"dataset {repeated[0]} is given more than once; give each dataset once")
    sources = Sources(tuple(discover(r, format, strict=strict) for r in roots), dataset_names(roots))
    if not sources.single:
        log.info("%d datasets: %s; labels %s", len(roots), sources.describe(), sources.scheme.name)
    return sources


def as_sources(data: Dataset | Sources) -> Sources:
    """A :class:`Sources` for one dataset or several (what the cache writer takes)."""
    return data if isinstance(data, Sources) else Sources((data,), (dataset_name(data.root),))
