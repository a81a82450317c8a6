"""Registry: names, options, errors, exact parameter counts, the ``glioseg models`` command."""
from __future__ import annotations

import json

import pytest
import torch

from glioseg.cli import main
from glioseg.models import count_parameters, create, describe, list_models
from glioseg.models.registry import MODELS, takes_ids

NAMES = ["segresnet", "dalight3d", "dalight3d-no-sepconv", "dalight3d-no-idnorm", "dalight3d-no-csa",
         "dalight3d-no-ssfb", "unet3d", "attention_unet3d", "residual_unet3d", "vnet"]

# Counts the spec/issue gives exactly: (name, in, out, params).
EXACT = [
    ("segresnet", 4, 3, 4_702_227),
    ("dalight3d", 4, 4, 2_219_074),
    ("dalight3d-no-sepconv", 4, 4, 9_198_682),
    ("dalight3d-no-idnorm", 4, 4, 2_194_498),
    ("dalight3d-no-csa", 4, 4, 1_924_522),
    ("dalight3d-no-ssfb", 4, 4, 2_209_588),
]
# The comparison's baselines, ±10 %.
PUBLISHED = {"unet3d": 3.15e6, "attention_unet3d": 3.17e6, "residual_unet3d": 3.20e6, "vnet": 4.99e6}


def meta_model(name, in_channels=4, out_channels=3, **options):
    with torch.device("meta"):
        return create(name, in_channels, out_channels, **options)


def test_ten_names_in_order():
    assert list_models() == NAMES


@pytest.mark.parametrize("name,c_in,c_out,expected", EXACT)
def test_exact_parameter_counts(name, c_in, c_out, expected):
    assert count_parameters(meta_model(name, c_in, c_out)) == expected


@pytest.mark.parametrize("name,published", sorted(PUBLISHED.items()))
def test_baseline_sizes_within_ten_percent(name, published):
    params = count_parameters(meta_model(name, 4, 3))
    assert abs(params / published - 1) <= 0.10, (name, params)


def test_region_output_changes_only_the_last_conv():
    # 4 → 3 channels drops one output row of the final 1×1×1 conv: 64 weights + 1 bias.
    assert count_parameters(meta_model("dalight3d", 4, 3)) == 2_219_074 - 65


@pytest.mark.parametrize("name", NAMES)
def test_every_model_has_divisor_description_and_ids_flag(name):
    model = meta_model(name)
    assert model.size_divisor in (8, 16)
    assert takes_ids(model) == model.takes_ids == name.startswith("dalight3d")
    assert MODELS[name].description and "\n" not in MODELS[name].description


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*segresnet.*vnet"):
        create("resnet")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"model 'dalight3d' options: unknown key\(s\) widht; valid keys:.*base_width"):
        create("dalight3d", widht=3)


def test_ablation_switch_fixed_by_name_is_rejected():
    with pytest.raises(ValueError, match=r"model 'dalight3d-no-csa' options: unknown key\(s\) csa; valid keys: (?!.*\bcsa(,|$))"):
        create("dalight3d-no-csa", csa=True)
    assert not create("dalight3d-no-csa", base_width=8, bottleneck_width=16, head_width=8).config.csa


def test_bad_channel_counts_are_rejected():
    with pytest.raises(ValueError, match="in_channels and out_channels"):
        create("unet3d", in_channels=0)


def test_describe_reports_params_and_flops():
    row = describe("unet3d", (32, 32, 32), base_width=8)
    assert row["params"] == count_parameters(create("unet3d", base_width=8))
    assert row["flops"] > 0 and row["size_divisor"] == 8


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "--patch", "16", "16", "16", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == NAMES
    assert all(set(r) == {"name", "params", "flops"} for r in rows)
    assert rows[0]["params"] == 4_702_227 and "4,702,227" in table
    assert all(name in table for name in NAMES)


def test_cli_bad_patch_is_an_error_without_output(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "--patch", "60", "64", "64", "--json", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())
