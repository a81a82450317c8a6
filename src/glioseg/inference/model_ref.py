"""A model reference, as a user gives one, → the model file it means: the one resolver.

A reference is a released model's name (``glioseg models --released``), a training checkpoint
(``RUN/best.pt``), released weights (``NAME.safetensors`` or its ``.json`` config) or an ONNX export
(``NAME.onnx`` or its config). :func:`resolve_model` tells them apart (a path that exists is a
file, whatever its name; otherwise a released name, its files checked against the index) and says
what the file holds (:func:`~glioseg.inference.bundle.model_kind`, from its bytes);
:func:`~glioseg.inference.bundle.load_bundle` and
:func:`~glioseg.inference.predictor.open_network` open what it resolved. ``predict``, ``export``
and the experiments all go through here, as timm resolves "name → weights" in one function.

A released model may be an ensemble of several member files (:mod:`glioseg.inference.released`):
its reference resolves to all of them (:attr:`ModelRef.files`); code that can use only one file
asks for :attr:`ModelRef.path` and gets an error naming the members.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glioseg.errors import InputError
from glioseg.inference import released
from glioseg.inference.bundle import claims_config, model_kind, sniff

MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".onnx")


@dataclass(frozen=True)
class ModelRef:
    """``files``: the model file, or every member's config of an ensemble release (averaged at
    prediction); ``kind``: ``checkpoint``, ``released`` or ``onnx``; ``name``: the released model's
    name when the reference was one."""
    files: tuple[Path, ...]
    kind: str
    name: str | None = None

    def __post_init__(self):
        files = (self.files,) if isinstance(self.files, (str, Path)) else self.files
        object.__setattr__(self, "files", tuple(Path(f) for f in files))

    @property
    def is_ensemble(self) -> bool:
        return len(self.files) > 1

    @property
    def path(self) -> Path:
        """The one model file; an ensemble release is an :class:`InputError` naming its members."""
        if self.is_ensemble:
            members = ", ".join(f.name.removesuffix(".json") for f in self.files)
            raise InputError(f"{self.name} is an ensemble of {len(self.files)} models ({members}); "
                             "this needs one model file: give one member's file")
        return self.files[0]


def is_model_file(path: Path) -> bool:
    """A file that is a model, not an input: by its suffix, or a JSON config that says it is one
    (so that a broken config's own errors reach the user instead of "not an input")."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix in MODEL_SUFFIXES:
        return True
    return sniff(path) == "json" and claims_config(path)


def folder_message(folder: Path) -> str:
    """A folder given as a model: name the model files in it (a run folder's best.pt, ...)."""
    inside = sorted(p.name for p in folder.iterdir() if is_model_file(p))
    hint = f"; model files in it: {', '.join(inside)}" if inside else "; it holds no model file"
    return f"--checkpoint {folder} is a folder, not a model file: give a file such as {folder}/best.pt{hint}"


def resolve_model(reference: str | Path, root: Path | None = None) -> ModelRef:
    """The model file a reference means and what it holds; a folder, a missing file that is no
    released name, or a file that is not a model are :class:`InputError`\\ s saying so.
    ``root``: another released-model folder (tests)."""
    path = Path(reference)
    if path.is_dir():
        raise InputError(folder_message(path))
    if path.exists():
        return ModelRef(path, model_kind(path))
    name = str(reference)
    if name not in released.read_index(root)["models"]:
        known = ", ".join(released.released_names(root)) or "none in this installation"
        raise released.ReleasedModelError(f"{name}: no such model file, nor a released model (released: {known})")
    return released_model(name, root)


def released_model(name: str, root: Path | None = None) -> ModelRef:
    """A released model by name only (``predict --model``): its members' configs, every indexed
    file checked; an unknown name lists the released ones."""
    configs = released.verified_configs(name, root)
    kinds = {model_kind(c) for c in configs}
    if len(kinds) != 1:
        raise released.ReleasedModelError(f"{name}: its members are of different kinds ({', '.join(sorted(kinds))})")
    return ModelRef(tuple(configs), kinds.pop(), name)
