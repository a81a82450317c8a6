"""``glioseg export CKPT|NAME --format onnx|torchscript|safetensors --out FILE [--roi X Y Z]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from glioseg.inference.bundle import config_path, load_bundle
from glioseg.inference.export import export_onnx, export_torchscript, write_released
from glioseg.inference.model_ref import resolve_model


def run(args: argparse.Namespace) -> int:
    bundle = load_bundle(resolve_model(args.checkpoint).path)
    out = Path(args.out)
    if args.format == "onnx":
        result = export_onnx(bundle, out, args.roi, args.tolerance)
    elif args.format == "torchscript":
        result = export_torchscript(bundle, out, args.roi, args.tolerance)
    else:
        result = write_released(bundle, out)
    detail = f"max |diff| to PyTorch {result['max_abs_diff']:.2e}" if "max_abs_diff" in result else \
        f"{result['tensors']} tensors, config {config_path(out).name}"
    print(f"export {args.format}: {out} ({detail})")
    return 0
