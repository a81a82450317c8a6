"""Specs that build on other specs: ``extends`` (a whole spec) and ``like`` (one arm).

A study that shares its data, folds, budget and evaluation with another (a recipe study on a
release's folds, a learning curve against the number of cases) names that spec instead of copying
it, so the two cannot drift apart::

    extends: segresnet-augment        # a shipped spec's name, or a file relative to this one
    name: segresnet-cases
    reference: nnunet-aug
    arms:
      - {name: nnunet-aug, like: nnunet-aug}                  # the parent's arm, unchanged
      - {name: cases-9, like: nnunet-aug, train_cases: 9}     # ... on 9 cases a fold

``extends``: the parent's keys, each top-level key this file gives replacing the parent's (``arms``
as a whole). ``like``: an arm earlier in this file, else the parent's, with this entry's keys
replacing its own; ``overrides`` and ``model_options`` are merged key by key (a key given here
replaces the base's value whole, so an ``augment`` block is given whole). The parent's relative
paths (``data``, a grades file) are resolved against the parent's own folder. What an experiment
records (``experiment.json``) is the expanded spec, so a run never depends on the parent later.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glioseg.errors import GliosegError

MERGED = ("overrides", "model_options")   # arm mappings merged key by key under ``like``

# (raw mapping, where it was read from, the folder its relative paths are against)
Reader = Callable[[str, str, str], tuple[dict[str, Any], str, str]]


class InheritError(GliosegError):
    """A bad ``extends`` or ``like``; the message names the spec file it is in."""


def _identity(source: str) -> str:
    """One spelling per spec file (``a/../b.yaml`` and ``b.yaml`` are one file), for the cycle check."""
    path = Path(source)
    return str(path.resolve()) if path.is_file() else source


def _absolute(value: Any, base: str) -> Any:
    def one(path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (Path(base) / p).resolve())
    if isinstance(value, str):
        return one(value)
    if isinstance(value, list):
        return [one(v) for v in value]
    return value


def _rebased(raw: dict[str, Any], base: str) -> dict[str, Any]:
    """``raw`` with its relative data and grades paths made absolute against ``base``."""
    out = dict(raw)
    if "data" in out:
        out["data"] = _absolute(out["data"], base)
    folds = out.get("folds")
    if isinstance(folds, dict) and isinstance(folds.get("grades"), str):
        out["folds"] = {**folds, "grades": _absolute(folds["grades"], base)}
    return out


def _like(arm: dict[str, Any], known: dict[str, dict[str, Any]], source: str) -> dict[str, Any]:
    name = arm.get("like")
    if name not in known:
        raise InheritError(f"{source}: arm {arm.get('name')!r} is like {name!r}, which is not an arm "
                           f"before it or of the spec it extends ({', '.join(known) or 'none'})")
    base = known[name]
    out = {**base, "description": "", **{k: v for k, v in arm.items() if k != "like"}}
    for key in MERGED:
        if isinstance(base.get(key), dict) and isinstance(arm.get(key), dict):
            out[key] = {**base[key], **arm[key]}
    return out


def _arms(raw: dict[str, Any], inherited: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    arms = raw.get("arms")
    if not isinstance(arms, list):
        return arms
    known = {a["name"]: a for a in inherited if isinstance(a, dict) and "name" in a}
    out = []
    for arm in arms:
        if isinstance(arm, dict) and "like" in arm:
            arm = _like(arm, {**known, **{a["name"]: a for a in out if "name" in a}}, source)
        out.append(arm)
    return out


def expand(raw: dict[str, Any], source: str, base: str, read: Reader, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` with ``extends`` and every ``like`` replaced by what they name (recursively)."""
    parent_name = raw.get("extends")
    parent: dict[str, Any] = {}
    if parent_name is not None:
        if not isinstance(parent_name, str) or not parent_name:
            raise InheritError(f"{source}: extends must name a spec (a shipped name or a file), got {parent_name!r}")
        parent_raw, parent_source, parent_base = read(parent_name, source, base)
        if _identity(parent_source) in map(_identity, (*chain, source)):
            raise InheritError(f"{source}: extends {parent_name!r} makes a cycle "
                               f"({' -> '.join((*chain, source, parent_source))})")
        parent = expand(parent_raw, parent_source, parent_base, read, (*chain, source))
        if parent_base != base:   # its relative paths meant its own folder (shipped specs: the current one)
            parent = _rebased(parent, parent_base)
    own = {k: v for k, v in raw.items() if k != "extends"}
    merged = {**parent, **own}
    if "arms" in own:
        merged["arms"] = _arms(own, parent.get("arms") or [], source)
    return merged
