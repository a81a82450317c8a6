"""``--device`` checked before anything runs on it.

``torch.device("cuda:7")`` is accepted on any build; the failure comes later as an
``AssertionError`` deep in torch ("Torch not compiled with CUDA enabled") or an invalid
device ordinal. Train and predict check the device here first, in words.
"""
from __future__ import annotations

import torch

from glioseg.errors import InputError

_KNOWN = ("cpu", "cuda")


def checked_device(text: str) -> torch.device:
    """The ``torch.device`` for ``--device text``; a ``ValueError`` says why it cannot be used."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--device {text!r} is not a device ({exc}); expected cpu, cuda or cuda:N") from None
    if device.type not in _KNOWN:
        raise InputError(f"--device {text!r}: glioseg runs on {' or '.join(_KNOWN)}; expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"--device {text}: torch {torch.__version__} ({build}) sees no CUDA device; "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {text}: torch sees {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
