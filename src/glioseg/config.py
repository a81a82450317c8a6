"""Frozen-dataclass configuration: from dicts and YAML files, back to plain dicts.

Every settings object in glioseg is a frozen dataclass. ``from_dict`` builds one from plain
values (as read from YAML or a checkpoint), recursing into nested dataclasses; an unknown
key is a ``ValueError`` that lists the valid ones, so a typo never silently falls back to a
default, and a value of the wrong type (``patch: "abc"`` for a tuple of ints) is one that
names the field. A dataclass with a ``shorthand`` class attribute also takes a plain value for
that one field (``precision: bf16`` for ``precision: {policy: bf16}``). This is the one
"dataclass from a mapping" rule of the package: every settings class is read through it.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from glioseg.errors import InputError

T = TypeVar("T")
_SCALAR_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _scalar(tp: type, value: Any, where: str) -> Any:
    """``value`` as the field's scalar type; a wrong type names the field, not int()'s complaint."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise InputError(f"{where}: expected {_SCALAR_NAMES[tp]}, got {value!r}")
    return value


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if dataclasses.is_dataclass(tp) and getattr(tp, "shorthand", None) and not isinstance(value, tp):
        return from_dict(tp, {tp.shorthand: value}, where)
    if (origin or tp) in (dict, collections.abc.Mapping) and not isinstance(value, collections.abc.Mapping):
        raise InputError(f"{where}: expected a mapping, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v, where) for v in value)
    if tp in _SCALAR_NAMES:
        return _scalar(tp, value, where)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "",
              fixed: dict[str, Any] | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys are a ``ValueError``.

    ``fixed``: fields whose values are set by the caller (a registered model name fixes its
    ablation switch); ``data`` may not set them, and the message lists only the other keys.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fixed = fixed or {}
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(fields) or '(none)'}")
    required = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise InputError(f"{where or cls.__name__}: missing key(s) {', '.join(missing)}; "
                         f"valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**fixed, **kwargs)
    except TypeError as exc:
        raise InputError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) → plain dicts, lists and scalars, safe for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read YAML config: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data
