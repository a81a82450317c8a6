"""A training run's settings checked against the registry and the device before any data is read.

``TrainConfig`` checks what it can alone (ranges, names). What needs the registry (the model's
options, its input size divisor) or the device (can it autocast in the asked precision) is
checked here, in well under a second, so a typo in ``model_options`` or a patch the network
cannot take fails before the cache of a whole dataset is built, naming the setting.
"""
from __future__ import annotations

import torch

from glioseg.errors import InputError
from glioseg.models.registry import get_spec, make_config
from glioseg.training.precision.probe import check_supported
from glioseg.training.recipe import TrainConfig


class SettingsError(InputError):
    """A training setting that cannot work with the chosen network or device."""


def check_model_settings(config: TrainConfig) -> None:
    """``model_options`` against the network's config, ``patch`` against its size divisor."""
    try:
        make_config(config.model, **config.model_options)
    except ValueError as exc:
        raise SettingsError(f"model_options: {exc}") from exc
    divisor = int(get_spec(config.model).network.size_divisor)
    if any(size % divisor for size in config.patch):
        fits = " ".join(str(max(divisor, round(size / divisor) * divisor)) for size in config.patch)
        raise SettingsError(f"patch {'x'.join(map(str, config.patch))}: {config.model} takes sizes that are "
                            f"multiples of {divisor} (e.g. patch {fits})")


def check_precision(config: TrainConfig, device: torch.device) -> None:
    """A fixed precision ``device`` cannot autocast in is refused (the controller's own check,
    without building a controller or its GradScaler; the name was checked by PrecisionConfig)."""
    try:
        check_supported(config.precision.policy, device)
    except ValueError as exc:
        raise SettingsError(f"precision: {exc}") from exc


def preflight(config: TrainConfig, device: torch.device) -> None:
    """Every check of a run's settings that needs no data."""
    check_model_settings(config)
    check_precision(config, device)
