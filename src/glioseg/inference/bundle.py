"""ModelBundle: everything prediction needs from a trained model, and the only way to load one.

A bundle is the network's name and options, what its outputs mean (WT/TC/ET regions or the
classes of a label scheme), the named input channels, the preprocessing it was trained with,
the site index of DALight-3D's identifier norms, the training patch size, the voxel spacing it
was trained at (``trained_spacing``; prediction resamples other spacings to it and back) and the
weights.

Where bundles live:

- inside every training checkpoint, under the key ``"bundle"`` (``bundle.to_state()``: tensors
  and plain Python values only, so ``torch.load(weights_only=True)`` reads it);
- as released weights: ``NAME.safetensors`` + ``NAME.safetensors.json`` (``write_released`` in
  :mod:`glioseg.inference.export`), no pickle anywhere;
- as an ONNX deployment file ``NAME.onnx`` + ``NAME.onnx.json`` (metadata only, no weights here).

The config is named after the whole file name, so an ONNX export and released weights of the
same model can share a folder and a stem.

:func:`load_bundle` accepts the first two and refuses TorchScript archives, legacy pickles and
anything else with a message that says what the file is and what to pass instead.
"""
from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from glioseg.checkpoint_io import ZIP_MAGIC, is_torchscript, load_checkpoint
from glioseg.config import from_dict
from glioseg.data.labels import get_scheme
from glioseg.data.output_space import OutputSpace
from glioseg.errors import InputError
from glioseg.files import file_sha256
from glioseg.inference.postprocess import PostprocessConfig

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1
CONFIG_KIND = "glioseg-bundle"
# Keys of a released config: the common ones, then those of an ONNX export (its fixed window).
CONFIG_KEYS = ("kind", "format", "file", "sha256", "bundle", "source_sha256",
               "window", "size_divisor", "inputs", "opset", "check")




@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A trained model and the facts needed to use it (see the module docstring).

    ``target`` "regions": ``out_channels`` = 3 sigmoid logits ordered WT, TC, ET;
    "classes": softmax logits over ``class_values(get_scheme(scheme))`` (background first).
    ``preprocess`` is ``PreprocessConfig.to_dict()``; ``site_index`` maps a site name to the
    DALight-3D identifier (unknown sites use the default norm); ``patch_size`` is the training
    patch (the default sliding-window size). ``weights`` is the model's ``state_dict``, empty
    for a metadata-only bundle (ONNX). ``sha256`` is the SHA-256 of the file it came from.
    """

    model: str
    options: Mapping[str, Any]
    in_channels: int
    out_channels: int
    target: str
    channels: tuple[str, ...]
    scheme: str
    preprocess: Mapping[str, Any]
    site_index: Mapping[str, int]
    patch_size: tuple[int, int, int]
    weights: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)
    sha256: str | None = None
    trained_spacing: tuple[float, float, float] | None = None
    # the post-processing chosen for this model by cross-validation (inference.postprocess), as
    # PostprocessConfig.to_dict(); empty: none. predict applies it unless asked not to
    postprocess: Mapping[str, Any] = field(default_factory=dict)
    # flip test-time augmentation by default (the mean over the 8 axis flips): set by the release
    # tool where the post-processing the model carries was chosen on flipped probabilities
    # (experiment postprocess --tta), whose thresholds assume flips. predict follows it unless told
    # (--tta / --no-tta)
    tta: bool = False

    def __post_init__(self):
        # A bundle read from a file (JSON a person may have edited, a checkpoint) was built by
        # config.from_dict, which checked each field's type by name (:meth:`from_state`); here the
        # values are normalised and the facts that tie fields together are checked.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "preprocess", dict(self.preprocess))
        object.__setattr__(self, "site_index", {str(k): v for k, v in self.site_index.items()})
        object.__setattr__(self, "postprocess", dict(self.postprocess))
        if self.trained_spacing is not None:
            object.__setattr__(self, "trained_spacing", tuple(float(v) for v in self.trained_spacing))
        self._validate()

    def _validate(self) -> None:
        try:
            expected = OutputSpace(self.target, get_scheme(self.scheme)).channels
        except ValueError as exc:
            raise ValueError(f"bundle: {exc}") from None
        if self.out_channels != expected:
            raise ValueError(f"bundle: target {self.target!r} with scheme {self.scheme!r} needs "
                             f"out_channels={expected}; got {self.out_channels}")
        if len(self.channels) != self.in_channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"bundle: channels {list(self.channels)} must be {self.in_channels} distinct names "
                             f"(in_channels={self.in_channels})")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"bundle: patch_size must be 3 positive sizes; got {self.patch_size}")
        bad = {k: v for k, v in self.site_index.items() if isinstance(v, bool) or not isinstance(v, int)}
        if bad:
            raise ValueError(f"bundle.site_index: expected whole numbers, got {bad}")
        try:
            post = PostprocessConfig.from_dict(self.postprocess)
        except InputError as exc:
            raise ValueError(f"bundle: {exc}") from None
        if post.thresholded and self.target != "regions":
            raise ValueError(f"bundle: postprocess.thresholds {list(post.thresholds)} need a region (sigmoid) "
                             f"network; this one's target is {self.target!r}")
        if not isinstance(self.tta, bool):
            raise ValueError(f"bundle.tta: expected true or false, got {self.tta!r}")
        spacing = self.trained_spacing
        if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing)):
            raise ValueError(f"bundle.trained_spacing: expected 3 positive millimetres or null, got {list(spacing)}")

    def metadata(self) -> dict:
        """Everything but the weights, as JSON-able values (the released config, the sidecars)."""
        return {
            "bundle_version": BUNDLE_VERSION, "model": self.model, "options": dict(self.options),
            "in_channels": self.in_channels, "out_channels": self.out_channels, "target": self.target,
            "channels": list(self.channels), "scheme": self.scheme, "preprocess": dict(self.preprocess),
            "site_index": dict(self.site_index), "patch_size": list(self.patch_size),
            "trained_spacing": list(self.trained_spacing) if self.trained_spacing else None,
            "postprocess": dict(self.postprocess), "tta": self.tta,
        }

    def to_state(self) -> dict:
        """Plain values and tensors for ``checkpoint["bundle"]`` (loads with weights_only=True)."""
        state = self.metadata()
        state["weights"] = {k: v.detach().cpu() for k, v in self.weights.items()}
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], sha256: str | None = None) -> "ModelBundle":
        """Inverse of :meth:`to_state` (or of :meth:`metadata`, giving a bundle without weights)."""
        state = dict(state)
        version = state.pop("bundle_version", None)
        if version != BUNDLE_VERSION:
            raise ValueError(f"bundle_version {version!r} is not supported; "
                             f"this glioseg reads version {BUNDLE_VERSION}")
        # the one "dataclass from a mapping" rule: unknown and missing keys, each field's type by name;
        # keys a bundle written before they existed lacks (trained_spacing) take their default
        return from_dict(cls, state, where="bundle", fixed={"sha256": sha256})

    @property
    def postprocess_config(self) -> PostprocessConfig:
        return PostprocessConfig.from_dict(self.postprocess)

    def check_settings(self) -> None:
        """The model options and preprocessing settings are valid (checked when a file is loaded,
        so that the error names the file, not a case predicted later)."""
        from glioseg.models.registry import make_config

        for name, check in (("options", lambda: make_config(self.model, **self.options)),
                            ("preprocess", self.preprocess_config)):
            try:
                check()
            except ValueError as exc:
                raise ValueError(f"bundle field {name}: {exc}") from None

    def expected_spacing(self) -> tuple[float, float, float] | None:
        """The voxel spacing (mm, RAS axes) the network expects: the preprocessing's target where it
        resamples, else the spacing it was trained at; None where neither is known."""
        target = self.preprocess.get("target_spacing")
        return tuple(float(v) for v in target) if target else self.trained_spacing

    def preprocess_config(self):
        """The :class:`glioseg.data.preprocess.PreprocessConfig` the model was trained with."""
        from glioseg.data.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def output(self) -> OutputSpace:
        """What the network's output channels mean (checked when the bundle was made)."""
        return OutputSpace(self.target, get_scheme(self.scheme))

    def site_id(self, site: str | None) -> int | None:
        """The identifier of ``site`` for DALight-3D's norms; None (default norm) when unknown."""
        return self.site_index.get(site) if site is not None else None

    def build_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The network in eval mode with the weights loaded (strictly: every key must match)."""
        if not self.weights:
            raise InputError(f"bundle of {self.model} has no weights (an ONNX metadata config?); "
                             "load a checkpoint or a .safetensors file")
        from glioseg.models.registry import create

        model = create(self.model, in_channels=self.in_channels, out_channels=self.out_channels, **self.options)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as exc:
            raise InputError(f"weights do not fit {self.model} with options {self.options}: "
                             f"{str(exc).splitlines()[0]}") from None
        return model.to(device).eval()


# ---- reading files ----

def sniff(path: Path) -> str:
    """What a model file is: "checkpoint", "damaged" (a zip that does not open), "torchscript",
    "pickle", "safetensors", "json", "onnx" or "unknown" — from its bytes, not only its name."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:  # a zip cut short or overwritten: the loader says what is wrong
            return "damaged"
        return "torchscript" if is_torchscript(names) else "checkpoint"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and path.suffix == ".safetensors":
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    if path.suffix == ".onnx":
        return "onnx"
    return "unknown"


_REFUSED = {
    "torchscript": "a TorchScript archive (code, not weights); glioseg does not execute it. Pass the "
                   "training checkpoint (.pt), released .safetensors + .json, or an .onnx export",
    "pickle": "a legacy pickle; glioseg loads only zip-format checkpoints with weights_only=True "
              "(re-save it with a current torch), .safetensors + .json, or .onnx",
    "unknown": "not a glioseg model file (expected a training checkpoint .pt, .safetensors + .json, "
               "or .onnx + .json)",
}


def claims_config(path: Path) -> bool:
    """Whether ``path`` is JSON that says it is a glioseg model config (valid or not)."""
    try:
        return json.loads(Path(path).read_text()).get("kind") == CONFIG_KIND
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def read_config(path: Path) -> dict:
    """A released model's JSON config (``glioseg export`` writes it beside the weights)."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the model config: {exc}") from None
    if not isinstance(config, dict) or config.get("kind") != CONFIG_KIND:
        raise InputError(f"{path}: not a glioseg model config (no \"kind\": \"{CONFIG_KIND}\")")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(CONFIG_KEYS)}")
    return config


def bundle_from_config(config_file: Path, config: dict, digest: str, weights: Mapping | None = None) -> ModelBundle:
    """The bundle a released config describes; every problem names the config file and the field."""
    state = config.get("bundle")
    if not isinstance(state, dict):
        raise InputError(f"{config_file}: \"bundle\" must be an object, got {state!r}")
    try:
        bundle = ModelBundle.from_state({**state, **({"weights": weights} if weights is not None else {})},
                                        sha256=digest)
        bundle.check_settings()
    except ValueError as exc:
        raise InputError(f"{config_file}: {exc}") from None
    return bundle


def config_path(weights: Path) -> Path:
    """``NAME.safetensors.json`` / ``NAME.onnx.json`` beside the file."""
    return weights.with_name(weights.name + ".json")


def released_file(config_file: Path, config: dict) -> Path:
    """The weights/ONNX file a config names; it must sit in the config's folder."""
    name = str(config.get("file", ""))
    if not name or Path(name).name != name:
        raise InputError(f"{config_file}: \"file\" must be a plain file name beside the config; got {name!r}")
    return config_file.parent / name


def released_config(path: Path) -> Path:
    """The JSON config of a released model given by its weights/ONNX file or by the config itself."""
    return path if sniff(path) == "json" else config_path(path)


def verified_released(path: Path) -> tuple[Path, dict, str]:
    """(model file, config, its SHA-256) for a .safetensors/.onnx file or its .json config.

    The file's SHA-256 must equal the config's ``sha256``: a swapped or damaged file is refused.
    """
    config_file = released_config(path)
    if not config_file.is_file():
        raise InputError(f"{path}: its config {config_file.name} is missing; a released model is "
                         "NAME.safetensors (or NAME.onnx) + NAME.safetensors.json (NAME.onnx.json) side by side")
    config = read_config(config_file)
    target = released_file(config_file, config)
    if path != config_file and target.resolve() != path.resolve():
        raise InputError(f"{config_file}: describes {target.name}, not {path.name}")
    if not target.is_file():
        raise InputError(f"{config_file}: its model file {target.name} is missing")
    digest = file_sha256(target)
    if digest != config.get("sha256"):
        raise InputError(f"{target}: SHA-256 {digest[:16]}... differs from {config_file.name}'s "
                         f"{str(config.get('sha256'))[:16]}... (damaged or replaced)")
    return target, config, digest


def _load_safetensors(path: Path) -> ModelBundle:
    from safetensors.torch import load_file

    target, config, digest = verified_released(path)
    if config.get("format") != "safetensors":
        raise InputError(f"{path}: config describes a {config.get('format')!r} file; "
                         "ONNX models run with glioseg predict --onnx")
    return bundle_from_config(released_config(path), config, digest, load_file(str(target)))


def _load_checkpoint_bundle(path: Path) -> ModelBundle:
    state = load_checkpoint(path)
    if "bundle" not in state:
        raise InputError(f"{path}: a checkpoint without a \"bundle\" (keys: {', '.join(sorted(state))}); "
                         "it was not written by glioseg train")
    try:
        bundle = ModelBundle.from_state(state["bundle"], sha256=file_sha256(path))
        bundle.check_settings()
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return bundle


def model_kind(path: Path | str) -> str:
    """What a model file holds, from its bytes: ``checkpoint`` (a training checkpoint, or one too
    damaged to open: its loader says what is wrong), ``released`` (safetensors weights or their
    config) or ``onnx`` (an export or its config); anything else is refused, saying what it is."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    kind = sniff(path)
    if kind in ("checkpoint", "damaged"):
        return "checkpoint"
    if kind == "json":
        return "onnx" if read_config(path).get("format") == "onnx" else "released"
    if kind in ("safetensors", "onnx"):
        return "released" if kind == "safetensors" else "onnx"
    raise InputError(f"{path}: refused: {_REFUSED[kind]}")


def load_bundle(path: Path | str) -> ModelBundle:
    """Load a bundle from a training checkpoint or released safetensors + JSON; refuse the rest."""
    path = Path(path)
    kind = model_kind(path)
    if kind == "checkpoint":
        return _load_checkpoint_bundle(path)
    if kind == "onnx" and sniff(path) == "onnx":
        raise InputError(f"{path}: an ONNX model has no PyTorch weights; run it with glioseg predict --onnx")
    return _load_safetensors(path)   # an ONNX config: says it describes an ONNX file
