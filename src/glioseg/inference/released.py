"""Released models: named models shipped as package data, found by name and checked at load.

Layout (package data, written only by ``tools/release_model.py``)::

    glioseg/released/index.json                      the manifest: every model, its files' SHA-256
    glioseg/released/<name>/<name>.safetensors       weights (fp16 or fp32), no pickle
    glioseg/released/<name>/<name>.safetensors.json  the bundle: channels, preprocessing, labels, network
    glioseg/released/<name>/MODEL_CARD.md            data and terms, recipe, measured Dice, intended use

A released model may be an ensemble (nnU-Net's way: the k fold models of a cross-validation,
shipped together): ``<name>-fold0.safetensors`` (+ ``.json``), ``<name>-fold1...``, and the index
entry's ``"weights"`` is the list of member files instead of one file name. Prediction averages
the members' probabilities, as with several ``--checkpoint``. Index version 2 allows the list;
version 1 (one file name per model) is still read.

``verified_configs(name)`` checks every file the index lists against its SHA-256 (a missing file
or a changed byte is an error naming the file) and returns the members' config paths, which
:func:`glioseg.inference.bundle.load_bundle` and ``glioseg predict`` read like any released file.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from glioseg.errors import InputError
from glioseg.files import file_sha256
from glioseg.inference.bundle import config_path


INDEX = "index.json"
INDEX_KIND = "glioseg-released-index"
INDEX_VERSION = 2           # written; 2 allows a list of member files under "weights"
READ_VERSIONS = (1, 2)
CARD = "MODEL_CARD.md"


class ReleasedModelError(InputError):
    """A released model is unknown, incomplete or damaged."""


def package_root() -> Path:
    """``glioseg/released`` of this installation. safetensors reads files from disk, and glioseg
    installs as plain files (a checkout or an unpacked wheel), so the traversable is a path."""
    return Path(str(resources.files("glioseg") / "released"))


def read_index(root: Path | None = None) -> dict:
    """The manifest; a folder without one has no released models."""
    path = (root or package_root()) / INDEX
    if not path.is_file():
        return {"kind": INDEX_KIND, "version": INDEX_VERSION, "models": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReleasedModelError(f"{path}: cannot read the released-model index: {exc}") from None
    if not isinstance(index, dict) or index.get("kind") != INDEX_KIND or index.get("version") not in READ_VERSIONS:
        version = index.get("version") if isinstance(index, dict) else None
        raise ReleasedModelError(f"{path}: not a glioseg released-model index of a version this glioseg reads "
                                 f"({', '.join(map(str, READ_VERSIONS))}; it says {version!r}): "
                                 "upgrade glioseg or rebuild the index")
    return index


def released_names(root: Path | None = None) -> list[str]:
    return sorted(read_index(root)["models"])


def entry(name: str, root: Path | None = None) -> dict:
    """The index entry of ``name``; an unknown name is an error listing the released ones."""
    models = read_index(root)["models"]
    if name not in models:
        known = ", ".join(sorted(models)) or "none in this installation"
        raise ReleasedModelError(f"unknown released model {name!r}; released models: {known} "
                                 "(glioseg models --released)")
    return models[name]


def verify(name: str, root: Path | None = None) -> Path:
    """Check every file of ``name`` against the index; returns the model's folder."""
    root = root or package_root()
    folder, files = root / name, entry(name, root)["files"]
    for file, digest in files.items():
        path = folder / file
        if not path.is_file():
            raise ReleasedModelError(f"{path}: listed in {root / INDEX} but missing; reinstall glioseg")
        actual = file_sha256(path)
        if actual != digest:
            raise ReleasedModelError(f"{path}: SHA-256 {actual[:16]}... differs from {INDEX}'s {digest[:16]}... "
                                     "(damaged or replaced); reinstall glioseg")
    return folder


def weight_files(item: dict) -> list[str]:
    """The member weight files of an index entry: one for a single model (``"weights"``: a file
    name, as every version-1 entry has), k for an ensemble (``"weights"``: a list)."""
    weights = item.get("weights")
    files = [weights] if isinstance(weights, str) else weights
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        raise ReleasedModelError(f"{INDEX}: \"weights\" must be a file name or a list of them; got {weights!r}")
    return list(files)


def member_label(name: str, file: str) -> str:
    """A member's short name: ``fold0`` for ``<name>-fold0.safetensors``; the model's name for a
    single-file model."""
    stem = Path(file).name.removesuffix(".safetensors")
    return stem.removeprefix(f"{name}-") if stem != name else name


def verified_configs(name: str, root: Path | None = None) -> list[Path]:
    """The checked ``.safetensors.json`` configs of every member of a released model, in index
    order (one for a single model): what ``load_bundle`` and ``predict`` take."""
    folder = verify(name, root)
    return [config_path(folder / file) for file in weight_files(entry(name, root))]


def verified_config(name: str, root: Path | None = None) -> Path:
    """The checked config of a single-file released model; an ensemble is an error naming its
    members (callers that can run an ensemble use :func:`verified_configs`)."""
    configs = verified_configs(name, root)
    if len(configs) > 1:
        raise ReleasedModelError(f"{name} is an ensemble of {len(configs)} models "
                                 f"({', '.join(c.name.removesuffix('.json') for c in configs)}), not one file")
    return configs[0]


def _status(name: str, root: Path | None) -> str:
    try:
        verify(name, root)
    except ReleasedModelError as exc:
        return f"DAMAGED ({exc})"
    return "ok"


def list_released(root: Path | None = None) -> list[dict]:
    """One row per released model: name, architecture, members (1 for a single model), params per
    member, Dice, size of all its files, weights dtype, status."""
    root = root or package_root()
    rows = []
    for name in released_names(root):
        item = entry(name, root)
        size = sum((root / name / f).stat().st_size for f in item["files"] if (root / name / f).is_file())
        rows.append({"name": name, "model": item["model"], "members": len(weight_files(item)),
                     "params": item["params"], "dice": item["dice"],
                     "bytes": size, "dtype": item["dtype"], "status": _status(name, root)})
    return rows
