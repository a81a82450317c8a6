"""The preprocessed cache on disk: layout, resumable parallel build, fingerprint, reader.

What goes into a case is :mod:`glioseg.data.preprocess`'s business; this module only knows
how cases are stored, when one is up to date, and how to (re)make the stale ones in parallel.

Layout (``CACHE_VERSION`` 1)::

    CACHE/cache.json          the index; written last, so a cache without it is incomplete (of several
                          datasets: each case's dataset, ``case_sources``, and the ``datasets``)
    CACHE/fingerprint.json    spacings, shapes, intensities, region volumes, sites
    CACHE/<case>/image.npy    (C, X, Y, Z) float32, RAS, brain-cropped, z-scored
    CACHE/<case>/label.npy    (X, Y, Z) uint8 label values of the cache's scheme (absent: no label)
    CACHE/<case>/meta.json    everything needed to map back; written last for the case

Every file goes through :func:`glioseg.files.atomic_path`, so a killed writer leaves only
``.part-*`` files, which the next run removes. A case is up to date when its ``meta.json``
records the same input content hashes (SHA-256 of the file bytes), configuration and scheme, and
labels converted from the same convention (``labels_from``, only where a case's dataset's own
convention differs from the cache's: :mod:`glioseg.data.sources`).
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from glioseg import __version__
from glioseg.data.errors import DataError
from glioseg.data.formats import check_case_id
from glioseg.data.labels import REGIONS, LabelScheme
from glioseg.data.sources import as_sources
from glioseg.errors import GliosegError, InputError
from glioseg.files import atomic_path, clean_parts, file_sha256, write_json
from glioseg.parallel import as_finished, worker_count

log = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX, FINGERPRINT = "cache.json", "fingerprint.json"
IMAGE, LABEL, META = "image.npy", "label.npy", "meta.json"


def input_digests(case) -> dict[str, dict[str, str]]:
    """Path and SHA-256 of each of a case's input files, by channel name and ``"label"``."""
    roles = dict(case.images)
    if case.label is not None:
        roles["label"] = case.label
    hashes: dict[Path, str] = {}
    return {role: {"path": str(path), "sha256": hashes.setdefault(Path(path), file_sha256(path))}
            for role, path in roles.items()}


def case_dir(out: Path | str, case_id: str) -> Path:
    """The case's folder in the cache; the id must be a plain name (no separators, no '..')."""
    check_case_id(case_id, out, "name a cache folder")
    return Path(out) / case_id


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, "missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read JSON: {exc}") from exc


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def _hashes(inputs: dict | None) -> dict[str, str]:
    """Content hashes by role: a moved or renamed dataset with the same bytes stays current."""
    return {role: entry["sha256"] for role, entry in (inputs or {}).items()}


def is_current(folder: Path, inputs: dict, config: dict, scheme: str, labels_from: str | None = None) -> bool:
    """Whether ``folder`` holds a complete case made from these inputs with this configuration."""
    try:
        meta = read_json(folder / META)
    except DataError:
        return False
    try:
        same = (meta["cache_version"] == CACHE_VERSION and _hashes(meta["inputs"]) == _hashes(inputs)
                and meta["config"] == config and meta["scheme"] == scheme
                and meta.get("labels_from") == labels_from)
        spatial = tuple(meta["shape"])
        channels = len(meta["channels"])
    except (KeyError, TypeError):  # not a meta.json this version wrote: make the case again
        return False
    if not same or _npy_shape(folder / IMAGE) != (channels, *spatial):
        return False
    return "label" not in inputs or _npy_shape(folder / LABEL) == spatial


def write_case(folder: Path, image: np.ndarray, label: np.ndarray | None, meta: dict) -> None:
    """Write one case; ``meta.json`` is removed first and written last (the completion marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).unlink(missing_ok=True)
    clean_parts(folder)
    save_npy(folder / IMAGE, image)
    if label is None:
        (folder / LABEL).unlink(missing_ok=True)
    else:
        save_npy(folder / LABEL, label)
    write_json(folder / META, meta)


# ---- bringing a cache up to date ----

def _check(case, out: Path, config: dict, scheme: str, labels_from: str | None) -> tuple[object, dict | None, str]:
    """(case, its input hashes if it must be (re)made, None if it is current, error message)."""
    try:
        folder = case_dir(out, case.case_id)
        clean_parts(folder)
        inputs = input_digests(case)
        return case, (None if is_current(folder, inputs, config, scheme, labels_from) else inputs), ""
    except (GliosegError, OSError) as exc:
        return case, None, f"{case.case_id}: {exc}"


def _make_and_write(make: Callable, out: Path, job: tuple) -> tuple[str, float, str]:
    """Run ``make(case, inputs) -> (image, label, meta)`` for ``job = (case, inputs)`` and write it.

    Returns (case id, seconds, error).
    """
    case, inputs = job
    start = time.perf_counter()
    try:
        image, label, meta = make(case, inputs)
        meta["seconds"] = round(time.perf_counter() - start, 3)
        write_case(case_dir(out, case.case_id), image, label, meta)
    except (GliosegError, OSError) as exc:
        # Returned, not raised: one bad case must not stop the others.
        return case.case_id, time.perf_counter() - start, f"{case.case_id}: {exc}"
    return case.case_id, time.perf_counter() - start, ""


def _run(make: Callable, todo: list, out: Path, workers: int) -> Iterator[tuple[str, float, str]]:
    if not todo:
        return
    bar = tqdm(total=len(todo), unit="case", desc="preprocess")
    try:
        if workers <= 1:
            for job in todo:
                yield _make_and_write(make, out, job)
                bar.update()
            return
        job = functools.partial(_make_and_write, make, out)
        try:
            for _, result in as_finished(job, todo, workers, spawn=True, one_thread=True):
                yield result
                bar.update()
        except BrokenProcessPool as exc:
            raise OSError(f"a preprocessing worker died ({exc}), often for lack of memory: rerun with "
                          f"fewer workers; finished cases are kept") from exc
    finally:
        bar.close()


def build(data, out: Path | str, config: dict, make: Callable, workers: int = 0) -> Path:
    """Bring the cache at ``out`` up to date for ``data`` (a dataset, or :class:`Sources` of several);
    ``make(case, inputs)`` makes one case.

    Up-to-date checks (content hashes) run in threads here; stale cases run in ``workers``
    processes (0: one per core; 1: in this process), so a resume that finds nothing to do
    starts no process. ``make`` must be picklable (a module-level function or a partial).
    """
    out, sources = Path(out), as_sources(data)
    for root in sources.roots:
        if root.is_dir() and out.resolve().is_relative_to(root.resolve()):
            raise InputError(f"{out}: the cache must not be inside the dataset folder {root}")
    ids = [c.case_id for c in sources.cases]   # unique: Sources checks them across its datasets
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)  # incomplete until every case is current again
    workers = worker_count(workers, len(ids))
    scheme = sources.scheme.name
    with ThreadPoolExecutor(workers) as threads:  # hashlib releases the GIL on large blocks
        checks = list(threads.map(lambda c: _check(c, out, config, scheme, sources.labels_from(c.case_id)),
                                  sources.cases))
    unchecked = [error for _, _, error in checks if error]
    todo = [(case, inputs) for case, inputs, error in checks if inputs is not None]
    failed = []
    for case_id, seconds, error in _run(make, todo, out, min(workers, len(todo))):
        log.debug("%s: %s in %.2f s", case_id, "failed" if error else "done", seconds)
        failed += [error] if error else []
    errors = unchecked + failed
    log.info("preprocess %s: %d preprocessed, %d up to date (skipped), %d failed",
             out, len(todo) - len(failed), len(ids) - len(todo) - len(unchecked), len(errors))
    if errors:
        raise InputError(f"{len(errors)} of {len(ids)} cases failed (the others are kept; fix them and "
                         f"rerun to resume):\n  " + "\n  ".join(sorted(errors)))
    finish(out, sources, config)
    return out


def _summary(values) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)),
            "min": float(arr.min()), "max": float(arr.max())}


def _pooled_intensity(metas: list[dict], channel: str) -> dict[str, float]:
    """Brain-voxel statistics of one channel over all cases (voxel-weighted mean, pooled std)."""
    stats = [m["intensity"][channel] for m in metas]
    n = np.array([s["voxels"] for s in stats], dtype=np.float64)
    means = np.array([s["mean"] for s in stats])
    mean = float((n * means).sum() / n.sum())
    var = (n * (np.array([s["std"] for s in stats]) ** 2 + (means - mean) ** 2)).sum() / n.sum()
    out = {"mean": mean, "std": float(np.sqrt(var)),
           "min": min(s["min"] for s in stats), "max": max(s["max"] for s in stats)}
    for key in ("p00_5", "p50", "p99_5"):
        out[f"median_{key}"] = float(np.median([s[key] for s in stats]))
    return out


def fingerprint(metas: list[dict]) -> dict:
    """The dataset fingerprint from the cases' metadata (a simpler nnU-Net fingerprint)."""
    channels = metas[0]["channels"]
    labelled = [m for m in metas if m.get("volumes_ml")]
    return {
        "cases": len(metas),
        "spacing": {m["case"]: m["original"]["spacing"] for m in metas},
        "spacing_summary": [_summary(ax) for ax in zip(*(m["original"]["spacing"] for m in metas))],
        "shape": {m["case"]: m["original"]["shape"] for m in metas},
        "cache_shape": {m["case"]: m["shape"] for m in metas},
        "cache_shape_summary": [_summary(ax) for ax in zip(*(m["shape"] for m in metas))],
        "intensity": {c: _pooled_intensity(metas, c) for c in channels},
        "volumes_ml": {m["case"]: m["volumes_ml"] for m in labelled},
        "volumes_ml_summary": ({r: _summary([m["volumes_ml"][r] for m in labelled]) for r in REGIONS}
                               if labelled else {}),
        "sites": dict(sorted(Counter(m["site"] or "unknown" for m in metas).items())),
    }


def finish(out: Path, data, config: dict) -> None:
    """Write ``fingerprint.json``, then ``cache.json`` (last: it marks the cache complete).
    One dataset's index is what it always was; several add each case's dataset and the datasets."""
    sources = as_sources(data)
    ids = [c.case_id for c in sources.cases]
    write_json(out / FINGERPRINT, fingerprint([read_json(out / i / META) for i in ids]))
    first = sources.datasets[0]
    index = {
        "cache_version": CACHE_VERSION, "glioseg_version": __version__,
        "format": first.format if sources.single else "several",
        "source": str(first.root) if sources.single else [str(r) for r in sources.roots],
        "scheme": sources.scheme.to_dict(), "channels": list(sources.channels),
        "cases": ids, "sites": {c.case_id: c.site for c in sources.cases}, "config": config}
    write_json(out / INDEX, index if sources.single else {**index, **sources.index_entry()})


def scheme_from_dict(data: dict) -> LabelScheme:
    return LabelScheme(name=data["name"], labels={int(k): v for k, v in data["labels"].items()},
                       regions={k: tuple(v) for k, v in data["regions"].items()},
                       edema=data["edema"], core=data["core"], enhancing=data["enhancing"])


class Cache:
    """Read access to a complete cache; arrays come back memory-mapped (read-only)."""

    def __init__(self, path: Path, index: dict):
        self.path = Path(path)
        self.index = index
        self.format: str = index["format"]
        self.scheme = scheme_from_dict(index["scheme"])
        self.channels: tuple[str, ...] = tuple(index["channels"])
        self.case_ids: tuple[str, ...] = tuple(index["cases"])
        self.config: dict = index["config"]
        self._sites: dict[str, str | None] = index["sites"]
        # each case's dataset, in a cache of several datasets (None: one dataset)
        self.case_sources: dict[str, str] | None = index.get("case_sources")
        self.datasets: list[dict] = index.get("datasets", [])
        self._metas: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def _folder(self, case_id: str) -> Path:
        if case_id not in self._sites:
            raise KeyError(f"{case_id!r} is not a case of the cache {self.path}")
        return self.path / case_id

    def site(self, case_id: str) -> str | None:
        self._folder(case_id)
        return self._sites[case_id]

    def source(self, case_id: str) -> str | None:
        """The name of the case's dataset in a cache of several datasets; None in one of one."""
        self._folder(case_id)
        return self.case_sources[case_id] if self.case_sources is not None else None

    def meta(self, case_id: str) -> dict:
        """The case's ``meta.json`` (read once; treat it as read-only)."""
        if case_id not in self._metas:
            self._metas[case_id] = read_json(self._folder(case_id) / META)
        return self._metas[case_id]

    def _load(self, path: Path) -> np.memmap:
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(path, "missing from the cache; run glioseg preprocess again") from None
        except (OSError, ValueError) as exc:
            raise DataError(path, f"unreadable cache array: {exc}") from exc

    def image(self, case_id: str) -> np.memmap:
        """(C, X, Y, Z) float32 in ``channels`` order."""
        return self._load(self._folder(case_id) / IMAGE)

    def label(self, case_id: str) -> np.memmap | None:
        """(X, Y, Z) uint8 label values of ``scheme``; ``None`` for an unlabelled case."""
        if "label" not in self.meta(case_id)["inputs"]:
            return None
        return self._load(self._folder(case_id) / LABEL)

    def fingerprint(self) -> dict:
        return read_json(self.path / FINGERPRINT)


def load_cache(path: Path | str) -> Cache:
    """Open the cache at ``path``; a missing or incomplete cache is a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no cache folder here (make one with: glioseg preprocess DATA --out {path})")
    if not (path / INDEX).exists():
        raise DataError(path / INDEX, "missing: the cache is incomplete (preprocessing did not finish); "
                                      "run glioseg preprocess again to resume it")
    index = read_json(path / INDEX)
    if index.get("cache_version") != CACHE_VERSION:
        raise DataError(path / INDEX, f"cache version {index.get('cache_version')!r}; this glioseg "
                                      f"reads version {CACHE_VERSION}: preprocess the dataset again")
    for case_id in index["cases"]:
        if not (path / case_id / META).exists():
            raise DataError(path / case_id / META, f"missing: case {case_id} is incomplete; "
                                                   f"run glioseg preprocess again to resume")
    return Cache(path, index)
