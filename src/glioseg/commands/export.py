"""``glioseg export CKPT|NAME --format onnx|torchscript|safetensors --out FILE [--roi X Y Z]``.

A released ensemble (``glioseg models --released``: several members) is exported member by
member, all or nothing: ``OUT-fold0.onnx``, ``OUT-fold1.onnx``, ... beside ``--out``; ``glioseg
predict --onnx`` with all of them averages them as ``--model NAME`` does.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from glioseg.inference.bundle import config_path, load_bundle
from glioseg.inference.export import export_bundle, export_members
from glioseg.inference.model_ref import resolve_model
from glioseg.inference.released import member_label


def _detail(result: dict) -> str:
    if "max_abs_diff" in result:
        return f"max |diff| to PyTorch {result['max_abs_diff']:.2e}"
    return f"{result['tensors']} tensors, config {config_path(Path(result['file'])).name}"


def run(args: argparse.Namespace) -> int:
    ref = resolve_model(args.checkpoint)
    out = Path(args.out)
    if not ref.is_ensemble:
        result = export_bundle(load_bundle(ref.path), out, args.format, args.roi, args.tolerance)
        print(f"export {args.format}: {out} ({_detail(result)})")
        return 0
    members = {member_label(ref.name, f.name.removesuffix(".json")): load_bundle(f) for f in ref.files}
    results = export_members(members, out, args.format, args.roi, args.tolerance)
    for result in results:
        print(f"export {args.format}: {result['file']} ({_detail(result)})")
    files = " ".join(shlex.quote(r["file"]) for r in results)
    option = {"onnx": "--onnx", "safetensors": "--checkpoint"}.get(args.format)
    print(f"{ref.name} is an ensemble of {len(results)} models: exported each member"
          + (f"; predict with all of them to average them as --model {ref.name} does: "
             f"glioseg predict INPUT {option} {files} --out DIR" if option else ""))
    return 0
