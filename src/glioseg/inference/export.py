"""Export for deployment: ONNX and TorchScript (checked against PyTorch), safetensors + JSON.

Every export is written to a ``.part-`` name, checked, and only then renamed; a failed check
raises and leaves nothing at the output path. ONNX and safetensors files get a JSON config
beside them (``NAME.onnx.json`` / ``NAME.safetensors.json``: the bundle's metadata, the file's
SHA-256, the window size), which
is what ``glioseg predict`` reads with them; no pickle is involved in either.

ONNX graphs have a dynamic batch axis and, unless ``--roi`` fixes one, a dynamic window (any
multiple of the network's size divisor), so predict runs an ONNX model over the same windows as
its checkpoint; a fixed-window graph (``--roi``, or one exported before windows were dynamic) is
fed windows of exactly its size, and predict says so when that differs from the window asked. DALight-3D's site identifier is a second
input ``ids`` (int64, (B,)); -1 selects the default norm.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import shutil
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from glioseg.errors import InputError
from glioseg.files import atomic_path, file_sha256, write_json
from glioseg.inference.bundle import (CONFIG_KIND, ModelBundle, bundle_from_config, config_path, released_config,
                                      verified_released)
from glioseg.models.registry import takes_ids

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 18
MAX_WINDOW = 1024   # voxels per axis a dynamic-window graph accepts (BraTS volumes are 240x240x155)


@contextlib.contextmanager
def _quiet_exporter():
    """The ONNX exporter logs every graph pass at INFO; keep the CLI's output readable."""
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")
    levels = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _WithIds(torch.nn.Module):
    """``forward(image, ids)`` with ids (B,) int64, -1 meaning "no identifier" (default norm)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.model(image, ids=ids)


def _exportable(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    with_ids = takes_ids(model)
    return (_WithIds(model).eval() if with_ids else model), with_ids


def _example(bundle: ModelBundle, roi, with_ids: bool, batch: int = 2, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((batch, bundle.in_channels, *roi), generator=generator)
    ids = torch.full((batch,), -1, dtype=torch.long)
    return (image, ids) if with_ids else (image,)


def _check_roi(model: torch.nn.Module, roi) -> tuple[int, int, int]:
    div = int(getattr(model, "size_divisor", 1))
    roi = tuple(int(r) for r in roi)
    if len(roi) != 3 or any(r < 1 or r % div for r in roi):
        raise InputError(f"export window {list(roi)} must be 3 positive multiples of {div}")
    return roi


def _compare(name: str, expected: torch.Tensor, got: np.ndarray | torch.Tensor, tolerance: float) -> float:
    got = torch.as_tensor(np.asarray(got))
    if got.shape != expected.shape:
        raise InputError(f"{name} export gives shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    diff = float((got.float() - expected.float()).abs().max())
    if not diff <= tolerance:
        raise InputError(f"{name} export differs from PyTorch by {diff:.3g} (> {tolerance:g}) on a random "
                         "patch; nothing was written")
    return diff


def _write_config(weights: Path, bundle: ModelBundle, fmt: str, extra: dict) -> Path:
    config = {"kind": CONFIG_KIND, "format": fmt, "file": weights.name, "sha256": file_sha256(weights),
              "bundle": bundle.metadata(), "source_sha256": bundle.sha256, **extra}
    return write_json(config_path(weights), config)


def _dynamic_shapes(module: torch.nn.Module, names: list[str], divisor: int, fixed: bool) -> dict:
    """Batch always dynamic; the window too unless ``fixed``: any multiple of the size divisor."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    image = {0: batch}
    if not fixed:
        image.update({axis + 2: divisor * torch.export.Dim(f"{a}_blocks", min=1, max=MAX_WINDOW // divisor)
                      for axis, a in enumerate("xyz")})
    params = list(inspect.signature(module.forward).parameters)[:len(names)]
    return {p: (image if i == 0 else {0: batch}) for i, p in enumerate(params)}


def export_onnx(bundle: ModelBundle, out: Path, roi=None, tolerance: float = 1e-4) -> dict:
    """``out`` (.onnx) + ``out.onnx.json``; the graph is checked with onnxruntime against PyTorch.

    Without ``roi`` the graph takes any window whose sizes are multiples of the network's size
    divisor (checked at the training patch and at a second, non-cubic window), so ``glioseg
    predict`` runs it over the same windows as the checkpoint (one over the brain box by
    default); ``roi`` fixes the window for runtimes that need static shapes.
    """
    import onnxruntime

    model = bundle.build_model("cpu")
    fixed = roi is not None
    roi = _check_roi(model, roi or bundle.patch_size)
    divisor = int(getattr(model, "size_divisor", 1))
    module, with_ids = _exportable(model)
    example = _example(bundle, roi, with_ids)
    names = ["image", "ids"] if with_ids else ["image"]
    checks = [example] if fixed else [example, _example(bundle, (roi[0] + divisor, *roi[1:]), with_ids, batch=1)]
    with torch.no_grad():
        expected = [module(*inputs) for inputs in checks]
    with atomic_path(out) as tmp:
        with _quiet_exporter():
            onnx_program = torch.onnx.export(module, example, dynamo=True, verbose=False,
                                             dynamic_shapes=_dynamic_shapes(module, names, divisor, fixed),
                                             input_names=names, output_names=["logits"], opset_version=OPSET)
        onnx_program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = max(_compare("ONNX", want, session.run(["logits"], {n: t.numpy() for n, t in zip(names, inputs)})[0],
                            tolerance) for want, inputs in zip(expected, checks))
    extra = {"window": list(roi) if fixed else None, "size_divisor": divisor, "inputs": names, "opset": OPSET,
             "check": {"max_abs_diff": diff, "tolerance": tolerance,
                       "patch": [example[0].shape[0], *roi]}}
    _write_config(out, bundle, "onnx", extra)
    return {"file": str(out), "max_abs_diff": diff}


def export_torchscript(bundle: ModelBundle, out: Path, roi=None, tolerance: float = 1e-4) -> dict:
    """A traced TorchScript archive for C++/mobile runtimes, checked against PyTorch.

    glioseg itself never loads TorchScript (it is code); the check reloads only the file just written.
    """
    model = bundle.build_model("cpu")
    roi = _check_roi(model, roi or bundle.patch_size)
    module, with_ids = _exportable(model)
    example = _example(bundle, roi, with_ids)
    log.info("TorchScript is deprecated upstream (PyTorch >= 2.10); ONNX is the maintained deployment format")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Tracing warns about Python branches on shapes; the numeric check below is the real guard.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        expected = module(*example)
        traced = torch.jit.trace(module, example, check_trace=False)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp))
            got = torch.jit.load(str(tmp), map_location="cpu")(*_example(bundle, roi, with_ids))
            diff = _compare("TorchScript", expected, got, tolerance)
    return {"file": str(out), "max_abs_diff": diff}


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    safetensors writes the metadata map in hash order, which changes from one call to the next,
    so the same weights gave different bytes (a rebuilt release changed files whose tensors had
    not). Only the order changes: the tensor entries and their offsets stay, and the header keeps
    its length (safetensors pads it with spaces)."""
    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        text = json.dumps(ordered, separators=(",", ":")).encode()
        if len(text) > size:
            raise InputError(f"{path}: its safetensors header would grow when its metadata is sorted")
        f.seek(8)
        f.write(text.ljust(size, b" "))


def write_released(bundle: ModelBundle, out: Path) -> dict:
    """Released weights: ``out`` (.safetensors) + ``out.safetensors.json``; read back and compared bit for bit."""
    from safetensors.torch import load_file, save_file

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in bundle.weights.items()}
    if not weights:
        raise InputError("bundle has no weights to release")
    with atomic_path(out) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "glioseg": "weights; config in the .json beside"})
        sort_safetensors_metadata(tmp)   # the same weights, the same bytes
        back = load_file(str(tmp))
        changed = [k for k in weights if k not in back or not torch.equal(back[k], weights[k])]
        if changed or set(back) != set(weights):
            raise InputError(f"safetensors read-back differs for {changed[:5]}; nothing was written")
    _write_config(out, bundle, "safetensors", {})
    return {"file": str(out), "tensors": len(weights)}


def export_bundle(bundle: ModelBundle, out: Path, fmt: str, roi=None, tolerance: float = 1e-4) -> dict:
    """``bundle`` written as ``fmt`` (one of :data:`FORMATS`) at ``out``, checked."""
    if fmt == "onnx":
        return export_onnx(bundle, out, roi, tolerance)
    if fmt == "torchscript":
        return export_torchscript(bundle, out, roi, tolerance)
    if fmt == "safetensors":
        return write_released(bundle, out)
    raise InputError(f"export format {fmt!r} is unknown; use {', '.join(FORMATS)}")


def member_path(out: Path, label: str) -> Path:
    """Where member ``label`` of an ensemble goes for ``--out out``: ``seg.onnx`` → ``seg-fold0.onnx``
    (a TorchScript ``seg.ts.pt`` → ``seg-fold0.ts.pt``)."""
    stem, dot, suffix = out.name.partition(".")
    return out.with_name(f"{stem}-{label}{dot}{suffix}")


def export_members(members: Mapping[str, ModelBundle], out: Path, fmt: str, roi=None,
                   tolerance: float = 1e-4) -> list[dict]:
    """Every member of an ensemble exported beside ``out`` (:func:`member_path`), all or nothing:
    they are written and checked in a ``.part-`` folder and moved into place only when all passed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".part-{out.name}.", dir=out.parent))
    try:
        results = [export_bundle(bundle, part / member_path(out, label).name, fmt, roi, tolerance)
                   for label, bundle in members.items()]
        for file in sorted(part.iterdir()):
            file.replace(out.parent / file.name)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return [{**r, "file": str(out.parent / Path(r["file"]).name)} for r in results]


class OnnxNetwork:
    """An exported ONNX model run by onnxruntime; same call as :class:`TorchNetwork`."""

    kind = "onnxruntime"

    def __init__(self, path: Path, device: torch.device | str = "cpu"):
        import onnxruntime

        model_file, config, digest = verified_released(Path(path))
        if config.get("format") != "onnx":
            raise InputError(f"{path}: config describes a {config.get('format')!r} file, not ONNX")
        self.source = model_file
        self.bundle = bundle_from_config(released_config(Path(path)), config, digest)
        self.patch_size, self.name = self.bundle.patch_size, self.bundle.model
        window = config.get("window")   # None: a dynamic window (any multiple of size_divisor)
        self.fixed_window = None if window is None else tuple(int(w) for w in window)
        self.size_divisor = int(config.get("size_divisor", 1))
        self.inputs = list(config.get("inputs", ["image"]))
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(model_file), providers=providers)

    def __call__(self, x: torch.Tensor, site_id: int | None) -> torch.Tensor:
        feeds = {"image": x.detach().float().cpu().numpy()}
        if "ids" in self.inputs:
            feeds["ids"] = np.full((x.shape[0],), -1 if site_id is None else site_id, dtype=np.int64)
        return torch.from_numpy(self.session.run(["logits"], feeds)[0]).to(x.device)
