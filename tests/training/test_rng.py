"""Every RNG state survives a checkpoint round trip and continues the same streams."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from glioseg.checkpoint_io import load_checkpoint
from glioseg.training.checkpoint import save_checkpoint
from glioseg.training.rng import capture_rng_state, restore_rng_state


def _draw(gens: dict) -> list:
    return [random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(gens["np"].random()), float(torch.rand(1, generator=gens["torch"])),
            float(gens["mt"].random())]


def _gens(seed: int) -> dict:
    return {"np": np.random.default_rng(seed), "torch": torch.Generator().manual_seed(seed),
            "mt": np.random.Generator(np.random.MT19937(seed))}


def test_restored_state_repeats_every_stream_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    gens = _gens(4)
    _draw(gens)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state(gens)})
    expected = [_draw(gens) for _ in range(3)]

    random.seed(10), np.random.seed(20), torch.manual_seed(30)
    fresh = _gens(99)
    restore_rng_state(load_checkpoint(path)["rng"], fresh)
    assert [_draw(fresh) for _ in range(3)] == expected


def test_generator_names_and_kinds_must_match():
    state = capture_rng_state({"a": np.random.default_rng(0)})
    with pytest.raises(ValueError, match=r"names generators \['a'\], the run passed \['b'\]"):
        restore_rng_state(state, {"b": np.random.default_rng(0)})
    with pytest.raises(ValueError, match="checkpoint holds a numpy state"):
        restore_rng_state(state, {"a": torch.Generator()})
