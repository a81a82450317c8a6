"""The memory budget of one image read, shared by the CLI option and worker processes.

``glioseg --max-image-mb MB`` sets ``$GLIOSEG_MAX_IMAGE_MB``, so that processes started for
parallel cases read under the same budget. Kept free of NumPy/nibabel so that the CLI can
name it in ``--help`` without importing them.
"""
from __future__ import annotations

import os

from glioseg.errors import InputError

MAX_IMAGE_MB_ENV = "GLIOSEG_MAX_IMAGE_MB"
# 7x a 4-channel float32 BraTS volume (143 MiB), 5x a 0.5 mm whole-head int16 scan.
DEFAULT_MAX_IMAGE_MB = 1024


def max_image_bytes() -> int:
    """The decoded voxel bytes one file may claim: ``$GLIOSEG_MAX_IMAGE_MB`` MiB, or the default."""
    text = os.environ.get(MAX_IMAGE_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not mb > 0:
        raise InputError(f"${MAX_IMAGE_MB_ENV} is {text!r}; expected a positive number of MiB")
    return int(mb * (1 << 20))
