"""Settings that cannot work are refused before any data is read, naming the setting."""
from __future__ import annotations

import pytest
import torch

from glioseg.training import trainer as trainer_module
from glioseg.training.preflight import SettingsError, check_model_settings, preflight
from glioseg.training.recipe import build_config

from ._runs import TINY, run_inprocess, train_args, write_config


def _config(**changes):
    return build_config(None, None, {**TINY, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"patch": (20, 16, 16)}, r"patch 20x16x16: segresnet takes sizes that are multiples of 8 \(e\.g\. patch 16 16 16\)"),
    ({"model": "dalight3d", "model_options": {}, "patch": (36, 36, 36)}, "multiples of 8"),
    ({"model_options": {"init_filter": 8}}, r"model_options: model 'segresnet' options: unknown key\(s\) init_filter"),
    ({"model": "dalight3d-no-csa", "model_options": {"csa": True}}, r"unknown key\(s\) csa"),
    # values MONAI's constructors would only refuse when the run starts to build the network
    ({"model_options": {"init_filters": 12}}, r"model_options: segresnet: init_filters must be a positive multiple of 8"),
    ({"model_options": {"dropout": 1.5}}, r"segresnet: dropout must be in \[0, 1\), got 1\.5"),
    ({"model": "vnet", "model_options": {"base_width": 0}}, "vnet: base_width must be positive"),
    ({"model": "residual_unet3d", "model_options": {"base_width": -2}}, "base_width must be positive, got -2"),
])
def test_model_settings_are_checked_against_the_registry(changes, message):
    with pytest.raises(SettingsError, match=message):
        check_model_settings(_config(**changes))


def test_good_settings_pass():
    preflight(_config(), torch.device("cpu"))
    preflight(_config(model="unet3d", model_options={}, patch=(32, 24, 16)), torch.device("cpu"))


def test_a_precision_the_device_cannot_autocast_is_refused(monkeypatch):
    monkeypatch.setattr("glioseg.training.precision.probe.supported_precisions", lambda device: ("fp32",))
    with pytest.raises(SettingsError, match="precision: precision bf16 is not supported on cpu"):
        preflight(_config(precision="bf16"), torch.device("cpu"))
    preflight(_config(precision="auto"), torch.device("cpu"))


def test_train_refuses_before_touching_the_data(tmp_path, monkeypatch, caplog):
    """The dataset path does not exist: the patch error must come first, and nothing is prepared."""
    def no_data(*args, **kwargs):
        raise AssertionError("prepare_data was called")

    monkeypatch.setattr(trainer_module, "prepare_data", no_data)
    config = write_config(tmp_path, patch=[20, 20, 20])
    assert run_inprocess(train_args(tmp_path / "no-such-dataset", tmp_path / "run", config)) == 2
    assert "patch 20x20x20" in caplog.text
    assert not (tmp_path / "run").exists()


def test_checking_a_precision_builds_no_controller_nor_grad_scaler(monkeypatch):
    """preflight validates the precision against the device only (auto with fp16 among its
    candidates once built a whole controller, GradScaler included, to do so)."""
    def no_scaler(*args, **kwargs):
        raise AssertionError("a GradScaler was built")

    from glioseg.training.precision import supported_precisions

    if "fp16" not in supported_precisions("cpu"):
        pytest.skip("no fp16 autocast on this CPU: a controller would build no GradScaler here either")
    monkeypatch.setattr(torch.amp, "GradScaler", no_scaler)
    preflight(_config(precision="auto"), torch.device("cpu"))
    preflight(_config(precision="fp16"), torch.device("cpu"))
