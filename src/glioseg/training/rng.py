"""Capture and restore every random-number state a training run depends on.

A resumed run only repeats an uninterrupted one bit for bit when every generator continues
where it stopped: python ``random``, NumPy's legacy global state (some libraries still draw
from it), torch's CPU generator, each CUDA device's generator, and the explicit generators
the run owns (``np.random.Generator`` / ``torch.Generator`` objects, passed by name).

The captured state holds only tensors and plain Python values, so it can go straight into a
checkpoint loadable with ``torch.load(weights_only=True)``.

Usage (trainer)::

    from glioseg.training.rng import capture_rng_state, restore_rng_state

    gens = {"sampler": np_rng, "dropout": torch_gen}      # the run's own generators
    state["rng"] = capture_rng_state(gens)                # before save_checkpoint(...)
    ...
    restore_rng_state(checkpoint["rng"], gens)            # after building the same objects
"""
from __future__ import annotations

import logging
import random
from typing import Any, Mapping

import numpy as np
import torch

from glioseg.errors import InputError

log = logging.getLogger(__name__)

Generator = np.random.Generator | torch.Generator


def _numpy_to_plain(value: Any) -> Any:
    """NumPy bit-generator states hold ndarrays (MT19937 keys); store them as tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _numpy_to_plain(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _plain_to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy().copy()
    if isinstance(value, dict):
        return {k: _plain_to_numpy(v) for k, v in value.items()}
    return value


def _generator_state(gen: Generator) -> dict:
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": _numpy_to_plain(gen.bit_generator.state)}
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    raise TypeError(f"cannot capture the state of {type(gen).__name__}: expected "
                    "np.random.Generator or torch.Generator")


def _set_generator_state(name: str, gen: Generator, saved: dict) -> None:
    kind = "numpy" if isinstance(gen, np.random.Generator) else "torch"
    if saved["kind"] != kind:
        raise InputError(f"generator {name!r}: checkpoint holds a {saved['kind']} state, "
                         f"the run passed a {kind} generator")
    if kind == "numpy":
        gen.bit_generator.state = _plain_to_numpy(saved["state"])
    else:
        gen.set_state(saved["state"])


def capture_rng_state(generators: Mapping[str, Generator] | None = None) -> dict:
    """Return every RNG state as a dict of tensors and plain Python values.

    Keys: ``python``, ``numpy_global``, ``torch``, ``cuda`` (a list of per-device states,
    empty without CUDA) and ``generators`` (name -> state of each generator passed in).
    """
    version, internal, gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "python": [version, list(internal), gauss],
        "numpy_global": _numpy_to_plain(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "generators": {name: _generator_state(g) for name, g in (generators or {}).items()},
    }


def restore_rng_state(state: Mapping[str, Any],
                      generators: Mapping[str, Generator] | None = None) -> None:
    """Put back every RNG state captured by :func:`capture_rng_state`.

    ``generators`` must name the same generators as at capture time (ValueError otherwise).
    CUDA states are restored for the devices present; a CPU-only resume of a GPU run logs a
    warning, since the CUDA streams cannot continue there.
    """
    generators = dict(generators or {})
    saved = dict(state.get("generators", {}))
    if set(saved) != set(generators):
        raise InputError(f"RNG state names generators {sorted(saved)}, the run passed "
                         f"{sorted(generators)}; they must match to resume exactly")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_plain_to_numpy(state["numpy_global"]))
    torch.set_rng_state(state["torch"])
    _restore_cuda(list(state.get("cuda", [])))
    for name, gen in generators.items():
        _set_generator_state(name, gen, saved[name])


def _restore_cuda(cuda: list[torch.Tensor]) -> None:
    if not cuda:
        return
    if not torch.cuda.is_available():
        log.warning("checkpoint holds %d CUDA RNG state(s) but CUDA is not available; "
                    "the resumed run will not repeat the GPU random streams", len(cuda))
        return
    count = torch.cuda.device_count()
    if count != len(cuda):
        log.warning("checkpoint holds %d CUDA RNG states, this machine has %d devices; "
                    "restoring the first %d", len(cuda), count, min(count, len(cuda)))
    for index, rng in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(rng, index)
