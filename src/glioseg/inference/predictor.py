"""Sliding-window prediction: Gaussian windows, flips, ensembles, fp32 re-runs, out-of-memory ladder.

The engine works on a preprocessed case (cache space: RAS, brain-cropped, z-scored, (C, x, y, z))
and returns averaged probabilities; :mod:`glioseg.inference.pipeline` reads the files and writes
the results back in the scanner's geometry, and :mod:`glioseg.commands.predict` is the command.

Precision: windows run under autocast in ``fp32`` / ``bf16`` / ``fp16``; every window's logits are
checked, and a window (batch item) with any non-finite value is run again in fp32; MONAI
aggregates in the input's dtype, which is float32, so the stitching is always fp32.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from glioseg.data.preprocess import crop, uncrop
from glioseg.errors import InputError
from glioseg.cpu_allocator import keep_freed_memory
from glioseg.inference.bundle import ModelBundle, load_bundle, model_kind
from glioseg.inference.precision import PrecisionChoice, choose_precision
from glioseg.inference.postprocess import PostprocessConfig
from glioseg.models.cpu_kernels import accelerate_cpu
from glioseg.models.registry import takes_ids
from glioseg.precisions import DTYPES, POLICIES

log = logging.getLogger(__name__)

WINDOWS = ("box", "patch", "volume")
POSTPROCESS = ("model", "none")
# The 8 combinations of flips over the spatial axes of a (B, C, X, Y, Z) tensor.
FLIPS: tuple[tuple[int, ...], ...] = tuple(d for n in range(4) for d in itertools.combinations((2, 3, 4), n))


@dataclass(frozen=True)
class PredictConfig:
    """How to run the windows.

    ``window``: "box" (default) runs one window over the whole brain box, rounded up to the
    network's size divisor, so each voxel goes through the network once: on a CPU about 3x less
    work than MONAI's 240x240x160 recipe window and 4-5x less than training-patch windows with
    overlap 0.5 (benchmarks/bench_inference.py). It needs activation memory for the whole box;
    out of memory, prediction falls back to training-patch windows. "patch" uses the training
    patch; three sizes set the window. "volume" runs one window over the whole uncropped RAS
    volume, as MONAI's BraTS recipe does (240x240x160 for BraTS): the recipe's labels, since a
    network normalising over its window (GroupNorm, attention) depends on what the window holds,
    at 2-3x the work of "box" (:meth:`Predictor.case_probabilities`). A window never exceeds the
    box (rounded up): padding beyond it is wasted work. ``overlap`` matters only when several windows are needed.
    ``device`` runs the windows; ``sw_batch_size`` windows go through the network at once.
    """

    window: str | tuple[int, int, int] = "box"
    overlap: float = 0.5
    # None: the model's default (ModelBundle.tta; off for a training checkpoint)
    tta: bool | None = None
    precision: str = "fp32"
    sw_batch_size: int = 1
    device: str = "cpu"
    # "model": the post-processing the model carries (chosen by cross-validation; none for a
    # plain training checkpoint); "none": the network's labels as they are
    postprocess: str = "model"

    def __post_init__(self):
        if isinstance(self.window, str):
            if self.window not in WINDOWS:
                raise InputError(f"window {self.window!r} is unknown; use {' or '.join(WINDOWS)} or three sizes")
        else:
            window = tuple(int(w) for w in self.window)
            if len(window) != 3 or min(window) < 1:
                raise InputError(f"window must be 3 positive sizes; got {self.window!r}")
            object.__setattr__(self, "window", window)
        if not 0 <= self.overlap < 1:
            raise InputError(f"overlap must be in [0, 1); got {self.overlap}")
        if self.precision not in POLICIES:
            raise InputError(f"precision {self.precision!r} is unknown; known: {', '.join(POLICIES)}")
        if self.sw_batch_size < 1:
            raise InputError(f"sw_batch_size must be >= 1; got {self.sw_batch_size}")
        if self.postprocess not in POSTPROCESS:
            raise InputError(f"postprocess {self.postprocess!r} is unknown; use {' or '.join(POSTPROCESS)}")


class ModuleNetwork:
    """A PyTorch module as a window network: ``__call__(x, site_id)`` returns logits (B, K, x, y, z).

    Prediction wraps a bundle's model (:class:`TorchNetwork`); validation during training wraps the
    model being trained, so that both score a case through the same windows.
    """

    kind = "pytorch"
    fixed_window = None

    def __init__(self, model: torch.nn.Module, patch_size: Sequence[int], name: str):
        self.model, self.patch_size, self.name = model, tuple(int(p) for p in patch_size), name
        self.size_divisor = int(getattr(model, "size_divisor", 1))
        self.takes_ids = takes_ids(model)

    def __call__(self, x: torch.Tensor, site_id: int | None) -> torch.Tensor:
        if not self.takes_ids:
            return self.model(x)
        ids = None if site_id is None else torch.full((x.shape[0],), site_id, dtype=torch.long, device=x.device)
        return self.model(x, ids=ids)


class TorchNetwork(ModuleNetwork):
    """A bundle's PyTorch model, on glioseg's CPU convolution kernels where it runs on a CPU."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "cpu", source: Path | None = None):
        if torch.device(device).type == "cpu":
            keep_freed_memory()     # windows' large activations reuse freed pages (cpu_allocator)
        super().__init__(accelerate_cpu(bundle.build_model(device)), bundle.patch_size, bundle.model)
        self.bundle, self.source = bundle, source
        self.device = torch.device(device)


def open_network(path: Path, device: torch.device | str = "cpu"):
    """A runnable network for a model file: ONNX (``.onnx`` or its JSON config) through
    onnxruntime, anything else through :func:`load_bundle` and PyTorch."""
    path = Path(path)
    if path.suffix == ".onnx" or model_kind(path) == "onnx":
        from glioseg.inference.export import OnnxNetwork

        return OnnxNetwork(path, device)
    return TorchNetwork(load_bundle(path), device, source=path)


@dataclass
class RunStats:
    """What happened while predicting one case (goes into the sidecar)."""

    windows: int = 0
    fp32_reruns: int = 0
    window_size: list = field(default_factory=list)
    sw_batch_size: int = 0
    stitching: str = ""
    oom_retries: int = 0


class NonFiniteOutputError(InputError):
    """A window's logits are not finite even in fp32: the weights or the input are broken."""


class GuardedWindow:
    """The predictor handed to MONAI: autocast, then an fp32 re-run of non-finite windows."""

    def __init__(self, network, site_id: int | None, precision: str, stats: RunStats):
        self.network, self.site_id, self.stats = network, site_id, stats
        self.dtype = None if precision == "fp32" else DTYPES[precision]

    def _run(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return self.network(x, self.site_id).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x, self.dtype)
        self.stats.windows += x.shape[0]
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any() and self.dtype is not None:
            self.stats.fp32_reruns += int(bad.sum())
            log.debug("%d window(s) not finite in %s; re-running in fp32", int(bad.sum()), self.dtype)
            out[bad] = self._run(x[bad], None)
            bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any():
            raise NonFiniteOutputError(f"{int(bad.sum())} window(s) have non-finite outputs even in fp32: "
                                       "the weights or the preprocessed input are broken")
        return out


def window_size(config: PredictConfig, network, box: Sequence[int]) -> tuple[int, int, int]:
    """The window for a box of ``box`` voxels: never larger than the box rounded up to the divisor."""
    div = network.size_divisor
    rounded = [-(-n // div) * div for n in box]
    if network.fixed_window is not None:
        if isinstance(config.window, tuple) and tuple(config.window) != network.fixed_window:
            raise InputError(f"this ONNX model takes windows of {list(network.fixed_window)} only; "
                             f"got --roi {list(config.window)}")
        return network.fixed_window
    if config.window in ("box", "volume"):   # for "volume" the image is the uncropped volume
        return tuple(rounded)
    want = network.patch_size if config.window == "patch" else config.window
    bad = [w for w in want if w % div]
    if bad:
        raise InputError(f"window {list(want)} must be a multiple of {div} for {network.name}")
    return tuple(min(w, r) for w, r in zip(want, rounded))


def _attempts(config: PredictConfig, window: tuple[int, ...], patch: tuple[int, ...]):
    """The out-of-memory ladder: as asked, batch 1, training-patch windows, CPU stitching."""
    yield config.sw_batch_size, window, config.device
    if config.sw_batch_size > 1:
        yield 1, window, config.device
    small = tuple(min(w, p) for w, p in zip(window, patch))
    if small != window:
        yield 1, small, config.device
    if torch.device(config.device).type != "cpu":
        yield 1, small, "cpu"


def _oom_message(config: PredictConfig, tried: list[tuple]) -> str:
    steps = "; ".join(f"window {list(roi)} x batch {b}, stitching on {st}" for b, roi, st in tried)
    smaller = [max(8, r // 2) for r in tried[-1][1]]
    advice = [f"a smaller window (--roi {' '.join(map(str, smaller))})"]
    if torch.device(config.device).type != "cpu":
        if config.precision == "fp32":
            advice.append("--precision bf16 (or fp16)")
        advice.append("--device cpu")
    return (f"out of memory on {config.device} at precision {config.precision} after {len(tried)} attempt(s) "
            f"({steps}); try {' or '.join(advice)}")


def window_logits(network, image: torch.Tensor, config: PredictConfig, site_id: int | None,
                  stats: RunStats) -> torch.Tensor:
    """Gaussian sliding-window logits (1, K, x, y, z) float32 of one (1, C, x, y, z) image."""
    window = window_size(config, network, image.shape[2:])
    patch = network.fixed_window or window_size(replace(config, window="patch"), network, image.shape[2:])
    guard = GuardedWindow(network, site_id, config.precision, stats)
    tried = []
    for sw_batch, roi, stitch in _attempts(config, window, patch):
        tried.append((sw_batch, roi, stitch))
        counted = (stats.windows, stats.fp32_reruns)
        try:
            out = sliding_window_inference(image.to(stitch), roi, sw_batch, guard, overlap=config.overlap,
                                           mode="gaussian", sw_device=config.device, device=stitch)
        except torch.OutOfMemoryError:
            # Only CUDA raises this; a failed CPU allocation is a RuntimeError and is not retried.
            stats.windows, stats.fp32_reruns = counted
            stats.oom_retries += 1
            log.warning("out of memory with window %s, sw_batch_size %d, stitching on %s; retrying smaller",
                        list(roi), sw_batch, stitch)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        stats.window_size, stats.sw_batch_size, stats.stitching = list(roi), sw_batch, str(stitch)
        return out
    raise InputError(_oom_message(config, tried))


def fixed_window_notes(networks: Sequence, config: PredictConfig) -> list[str]:
    """Why a fixed-window ONNX model cannot run the window ``config`` asks for (one line each).

    A checkpoint runs one window over the brain box by default; a graph exported with a fixed
    window can only be fed windows of that size, and networks that normalise over their window
    then give other labels. Said, never silent (#23).
    """
    notes = []
    for net in networks:
        fixed = net.fixed_window
        if fixed is None or isinstance(config.window, tuple) or (config.window == "patch" and
                                                                 tuple(net.patch_size) == tuple(fixed)):
            continue
        asked = {"box": "one window over the brain box", "volume": "one window over the whole volume",
                 "patch": f"training-patch windows of {list(net.patch_size)}"}[config.window]
        notes.append(f"{Path(net.source).name} was exported with a fixed window of {list(fixed)}: it runs "
                     f"sliding {list(fixed)} windows where --roi {config.window} asks for {asked} (a "
                     f"checkpoint runs that), so its labels can differ from the checkpoint's; export it "
                     f"again without --roi for a graph that takes any window")
    return notes


def _check_ensemble(networks: Sequence) -> None:
    first = networks[0].bundle
    for net in networks[1:]:
        b = net.bundle
        for what in ("target", "channels", "preprocess"):
            if getattr(b, what) != getattr(first, what):
                raise InputError(f"ensemble members differ in {what}: {getattr(first, what)!r} vs "
                                 f"{getattr(b, what)!r}; only models with the same {what} can be averaged")
        spacings = (first.expected_spacing(), b.expected_spacing())
        if None not in spacings and spacings[0] != spacings[1]:
            raise InputError(f"ensemble members were trained at different spacings ({list(spacings[0])} vs "
                             f"{list(spacings[1])} mm); only models of one spacing can be averaged")
        if not b.output.same_outputs(first.output):
            raise InputError(f"ensemble members predict different classes ({first.scheme} vs {b.scheme})")
        if b.tta != first.tta:
            raise InputError(f"ensemble members differ in their flip default (tta {first.tta} vs {b.tta}); "
                             "an ensemble's probabilities get one")
        if b.postprocess_config != first.postprocess_config:
            raise InputError(f"ensemble members carry different post-processing ({first.postprocess_config.describe()} "
                             f"vs {b.postprocess_config.describe()}); an ensemble's labels get one")


class Predictor:
    """Averaged probabilities of an ensemble of networks, with optional flip TTA."""

    def __init__(self, networks: Sequence, config: PredictConfig):
        if not networks:
            raise InputError("no model given")
        _check_ensemble(networks)
        onnx = any(n.kind == "onnxruntime" for n in networks)
        if config.precision not in ("fp32", "auto") and onnx:
            raise InputError(f"--precision {config.precision} applies to PyTorch models; an ONNX model runs "
                             "in the precision it was exported in (fp32)")
        self.networks, self.bundle = list(networks), networks[0].bundle
        self.requested_precision = config.precision
        self.precision_choice = self._choose(config, onnx)
        tta = self.bundle.tta if config.tta is None else config.tta
        self.config = replace(config, precision=self.precision_choice.precision, tta=tta)
        if tta and config.tta is None:
            log.info("flips: the mean over the 8 axis flips, the model's default (--no-tta: one pass per model)")
        self.postprocess = (self.bundle.postprocess_config if config.postprocess == "model"
                            else PostprocessConfig())
        if self.postprocess.active:
            log.info("post-processing (the model's, from its cross-validation): %s", self.postprocess.describe())
        self.window_notes = fixed_window_notes(self.networks, config)
        for note in self.window_notes:
            log.warning("%s", note)

    def _choose(self, config: PredictConfig, onnx: bool) -> PrecisionChoice:
        """``auto``: the device's native low precision (:func:`choose_precision`); else as asked."""
        if config.precision != "auto":
            return PrecisionChoice(config.precision, f"{config.precision}: as asked")
        if onnx:
            return PrecisionChoice("fp32", "fp32: an ONNX model runs in the precision it was exported in")
        choice = choose_precision(config.device)
        log.info("precision %s", choice.reason)
        return choice

    @torch.no_grad()
    def probabilities(self, image: np.ndarray, site: str | None = None) -> tuple[np.ndarray, RunStats]:
        """(K, x, y, z) float32 mean probabilities of a cache-space (C, x, y, z) image."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        flips = FLIPS if self.config.tta else ((),)
        stats, total = RunStats(), None
        for network in self.networks:
            site_id = network.bundle.site_id(site)
            for dims in flips:
                logits = window_logits(network, x.flip(dims) if dims else x, self.config, site_id, stats)
                probs = self.bundle.output.activation(logits)
                probs = probs.flip(dims) if dims else probs
                total = probs if total is None else total.add_(probs)
        return (total / (len(flips) * len(self.networks)))[0].cpu().numpy(), stats

    def case_probabilities(self, image: np.ndarray, meta: dict, site: str | None = None) -> tuple[np.ndarray, RunStats]:
        """:meth:`probabilities` of a cache-space image with its preprocessing record ``meta``.

        With window "volume" the brain box goes back into its zero-filled RAS volume (zero is the
        z-scored background, as MONAI's NormalizeIntensityd(nonzero=True) leaves it), the network
        sees the whole volume, and the probabilities are cropped back to the box.
        """
        if self.config.window != "volume":
            return self.probabilities(image, site)
        box, shape = meta["crop"]["box"], tuple(meta["ras"]["shape"])
        probs, stats = self.probabilities(uncrop(np.asarray(image, dtype=np.float32), box, shape), site)
        return np.ascontiguousarray(crop(probs, box)), stats
