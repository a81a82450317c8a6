from dataclasses import dataclass, field

import pytest

from glioseg.config import from_dict, load_yaml, to_dict


@dataclass(frozen=True)
class Inner:
    scale: float = 0.1
    axes: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    size: tuple[int, ...] = (1, 2, 3)
    inner: Inner = field(default_factory=Inner)
    limit: float | None = None


def test_round_trip_nested():
    cfg = from_dict(Outer, {"name": "a", "size": [4, 5, 6], "inner": {"scale": 1}, "limit": 2})
    assert cfg == Outer("a", (4, 5, 6), Inner(1.0), 2.0)
    assert isinstance(cfg.inner.scale, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) sise; valid keys: name, size, inner, limit"):
        from_dict(Outer, {"sise": [1]})
    with pytest.raises(ValueError, match=r"inner: unknown key\(s\) scal"):
        from_dict(Outer, {"inner": {"scal": 1}})


def test_load_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="bad.yaml: a config file must hold a mapping"):
        load_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="broken.yaml: cannot read YAML"):
        load_yaml(broken)


@dataclass(frozen=True)
class Required:
    name: str
    options: dict = field(default_factory=dict)
    fixed: int = 0


def test_missing_keys_and_a_mapping_field_of_another_type_name_the_field():
    with pytest.raises(ValueError, match=r"^thing: missing key\(s\) name; valid keys: name, options, fixed$"):
        from_dict(Required, {"options": {}}, where="thing")
    with pytest.raises(ValueError, match=r"^thing.options: expected a mapping, got \[1\]$"):
        from_dict(Required, {"name": "a", "options": [1]}, where="thing")
    assert from_dict(Required, {"options": {"a": 1}}, where="thing", fixed={"name": "b"}) == Required("b", {"a": 1})
