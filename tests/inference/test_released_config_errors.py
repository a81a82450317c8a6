"""Hand-edited released configs: an unknown key or a wrongly typed field names the file and the field."""
from __future__ import annotations

import json
import re

import pytest

from glioseg.cli import main
from glioseg.inference.bundle import load_bundle
from glioseg.inference.export import write_released
from ._fakes import tiny_bundle


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    folder = tmp_path_factory.mktemp("released")
    write_released(tiny_bundle(0), folder / "model.safetensors")
    return folder / "model.safetensors", json.loads((folder / "model.safetensors.json").read_text())


def _set(path: str, value):
    def edit(config):
        *keys, last = path.split(".")
        target = config
        for key in keys:
            target = target[key]
        target[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("bundle.patch_size", "abc"), "bundle.patch_size: expected a list, got 'abc'"),
    (_set("bundle.patch_size", [16, "x", 16]), "bundle.patch_size: expected a whole number, got 'x'"),
    (_set("bundle.in_channels", "four"), "bundle.in_channels: expected a whole number, got 'four'"),
    (_set("bundle.options.bogus", 1), "bundle field options: model 'segresnet' options: unknown key(s) bogus"),
    (_set("bundle.options.init_filters", "8"), "bundle field options: model 'segresnet' options.init_filters: "
                                               "expected a whole number, got '8'"),
    (_set("bundle.preprocess.crop_margin", "abc"), "bundle field preprocess: preprocess.crop_margin: expected a "
                                                   "whole number, got 'abc'"),
    (_set("bundle.bogus", 1), "bundle: unknown key(s) bogus; valid keys: model, options"),
    (_set("bundle.site_index", [1]), "bundle.site_index: expected a mapping, got [1]"),
    (_set("bundle.trained_spacing", [1, 1, 0]), "bundle.trained_spacing: expected 3 positive millimetres or null"),
    (_set("bogus", 1), "unknown key(s) bogus; valid keys: kind, format, file"),
    (_set("bundle", [1]), '"bundle" must be an object, got [1]'),
])
def test_a_hand_edited_config_names_the_file_and_the_field(released, tmp_path, edit, message, caplog):
    weights, config = released
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / weights.name).write_bytes(weights.read_bytes())
    changed = json.loads(json.dumps(config))
    edit(changed)
    config_file = folder / "model.safetensors.json"
    config_file.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match=re.escape(f"{config_file}: {message}")):
        load_bundle(folder / weights.name)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["predict", str(data), "--checkpoint", str(config_file), "--out", str(tmp_path / "o")]) == 2
    assert f"{config_file}: {message}" in caplog.text and "Traceback" not in caplog.text
