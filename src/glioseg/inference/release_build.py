"""Build a released model from training checkpoints (used by ``tools/release_model.py``).

``build_release`` writes ``ROOT/<name>/`` (weights as safetensors + the bundle's JSON config via
:func:`glioseg.inference.export.write_released`, and ``MODEL_CARD.md``) under a ``.part-`` name,
renames it into place, and records each file's SHA-256 in ``ROOT/index.json``
(:mod:`glioseg.inference.released` reads and checks them).

One checkpoint gives ``<name>.safetensors``; several (the fold models of a cross-validation, in
fold order) give one released ensemble, ``<name>-fold0.safetensors``, ``<name>-fold1...``, whose
members must agree on everything that makes their probabilities averageable and the release one
model (:func:`check_members`).

Weights are stored in fp16 only when the fp16-rounded model's (ensemble's) labels agree with the
fp32 one's at Dice ≥ :data:`FP16_AGREEMENT` in every region on every given case (default
``glioseg predict`` windows); otherwise in fp32. The measured figures go into the card and the index.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from glioseg import __version__
from glioseg.checkpoint_io import load_checkpoint
from glioseg.run_io import RunFiles
from glioseg.data import preprocess
from glioseg.data.cases import load_case
from glioseg.data.labels import REGIONS
from glioseg.errors import InputError
from glioseg.evaluation.metrics import dice
from glioseg.files import file_sha256, write_json
from glioseg.inference import inputs, released
from glioseg.inference.bundle import ModelBundle
from glioseg.inference.export import write_released
from glioseg.inference.postprocess import PostprocessConfig
from glioseg.inference.model_card import ReleaseResults, dice_summary, read_results, render_card, union_cases
from glioseg.inference.predictor import PredictConfig, Predictor, TorchNetwork
from glioseg.models.registry import count_parameters

log = logging.getLogger(__name__)

FP16_AGREEMENT = 0.999
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
# What the members of one release must share: the inputs, the label convention and outputs, the
# preprocessing and post-processing, and the architecture (the window default too), so that one
# config describes them all.
MEMBER_FIELDS = ("channels", "scheme", "target", "out_channels", "in_channels", "preprocess", "postprocess",
                 "model", "options", "patch_size")


def half_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors rounded to fp16 (what an fp16 release stores); others unchanged."""
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}


def _regions(predictor: Predictor, array: np.ndarray, meta: dict, site: str | None) -> np.ndarray:
    probs, _ = predictor.case_probabilities(array, meta, site)
    return predictor.bundle.output.to_regions(probs)


def fp16_agreement(bundles: Sequence[ModelBundle] | ModelBundle, cases: Sequence[Path],
                   threshold: float = FP16_AGREEMENT) -> dict:
    """Per-case, per-region Dice between the labels of the fp32 and the fp16-rounded weights (of
    the ensemble of ``bundles``, averaged as ``predict`` averages them)."""
    bundles = [bundles] if isinstance(bundles, ModelBundle) else list(bundles)
    first = bundles[0]
    items = inputs.collect(list(cases), {}, None, first.channels, None, first.scheme)
    config = PredictConfig()
    full = Predictor([TorchNetwork(b) for b in bundles], config)
    half = Predictor([TorchNetwork(replace(b, weights=half_weights(b.weights))) for b in bundles], config)
    per_case = {}
    for item in items:
        image, _ = load_case(item.case, item.dataset)
        array, _, meta = preprocess.preprocess_case(image, None, item.case, first.preprocess_config(),
                                                    channels=item.dataset.channels)
        a = _regions(full, array, meta, item.case.site)
        b = _regions(half, array, meta, item.case.site)
        per_case[item.case.case_id] = {r: dice(b[i], a[i]) for i, r in enumerate(REGIONS)}
        log.info("fp16 vs fp32 labels, %s: %s", item.case.case_id,
                 ", ".join(f"{r} {v:.5f}" for r, v in per_case[item.case.case_id].items()))
    min_dice = {r: min(case[r] for case in per_case.values()) for r in REGIONS}
    dtype = "float16" if all(v >= threshold for v in min_dice.values()) else "float32"
    return {"dtype": dtype, "threshold": threshold, "cases": list(per_case), "per_case": per_case,
            "min_dice": min_dice}


def check_members(bundles: dict[Path, ModelBundle]) -> None:
    """Every member agrees with the first on :data:`MEMBER_FIELDS` and the spacing it expects;
    the first difference is an :class:`InputError` naming the checkpoint and the field."""
    (first_path, first), *rest = bundles.items()
    for path, bundle in rest:
        for what in MEMBER_FIELDS:
            mine, theirs = getattr(bundle, what), getattr(first, what)
            if mine != theirs:
                raise InputError(f"{path}: its {what} {mine!r} differs from {theirs!r} of {first_path}; the "
                                 "members of one release must agree on channels, labels, output, "
                                 "preprocessing and architecture")
        if bundle.expected_spacing() != first.expected_spacing():
            raise InputError(f"{path}: trained at {bundle.expected_spacing()} mm, {first_path} at "
                             f"{first.expected_spacing()} mm; the members of one release must expect one spacing")


def training_cases(state: dict) -> list[str] | None:
    """The case ids the checkpoint's run trained on (its saved split), so that users can tell a
    training case's Dice from a held-out one; None for a checkpoint without a split."""
    split = state.get("split")
    return sorted(split["train"]) if split else None


def training_facts(checkpoint: Path, state: dict, results: ReleaseResults, own_hours: bool = False) -> dict:
    """Recipe, steps, hours, hardware, precisions and training cases of the run that wrote ``checkpoint``.
    Hours: the results' (the release run's, as measured) unless ``own_hours`` (each member of an
    ensemble: its own run's), else summed from the run's metrics."""
    run = RunFiles(checkpoint.parent)
    summary = run.read_summary()
    steps_in = summary.get("steps_per_precision") if summary else None
    hours = results.hours if results.hours is not None and not own_hours else run.hours()
    return {"config": state["config"], "steps": int(state["progress"]["step"]), "hours": hours,
            "hardware": results.hardware, "precision_steps": steps_in, "versions": state.get("versions", {}),
            "cases": training_cases(state)}


def member_files(name: str, count: int) -> list[str]:
    """``<name>.safetensors`` for one model; ``<name>-fold<i>.safetensors`` for the members of an ensemble."""
    return [f"{name}.safetensors"] if count == 1 else [f"{name}-fold{i}.safetensors" for i in range(count)]


def check_fold_order(members: Sequence[dict], results: ReleaseResults) -> None:
    """A case the results say fold k held out must not be a training case of member fold k:
    otherwise the checkpoints were given out of fold order (or come from another split), and the
    card would call training cases held out."""
    by_label = {m["label"]: m for m in members}
    for case, label in sorted(results.held_out_by.items()):
        member = by_label.get(label)
        if len(members) > 1 and member is not None and member["cases"] is not None and case in member["cases"]:
            raise InputError(f"{member['checkpoint']}: member {label} trained on {case}, which the results say "
                             f"{label} held out; give the checkpoints in fold order (fold0 first), from the "
                             "runs the results score")


def _write_folder(part: Path, files: Sequence[str], bundles: Sequence[ModelBundle], card: str,
                  dtype: str) -> dict[str, str]:
    cast = half_weights if dtype == "float16" else (lambda w: {k: v.float() if v.is_floating_point() else v
                                                               for k, v in w.items()})
    for file, bundle in zip(files, bundles):
        write_released(replace(bundle, weights=cast(bundle.weights)), part / file)
    (part / released.CARD).write_text(card)
    for file in part.iterdir():
        file.chmod(0o644)  # safetensors writes 0600; package data is read by every user
    return {f.name: file_sha256(f) for f in sorted(part.iterdir())}


def _move_into_place(part: Path, final: Path) -> None:
    """Swap the finished folder in; a replaced release is removed only after the swap."""
    old = None
    if final.exists():
        old = final.with_name(f".part-old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    part.rename(final)
    if old is not None:
        shutil.rmtree(old)


def _update_index(root: Path, name: str, item: dict) -> None:
    index = released.read_index(root)
    index["models"] = {**index["models"], name: item}
    index["version"] = released.INDEX_VERSION   # a version-1 index is read and written back as 2
    write_json(root / released.INDEX, index, sort_keys=True, end="\n")


def _read_members(name: str, checkpoints: Sequence[Path], files: Sequence[str], results: ReleaseResults
                  ) -> tuple[list[ModelBundle], list[dict]]:
    """Each checkpoint's bundle and training facts (label, file, steps, cases, ...), members checked."""
    bundles, members = {}, []
    for checkpoint, file in zip(checkpoints, files):
        state = load_checkpoint(checkpoint)
        if "bundle" not in state:
            raise InputError(f"{checkpoint}: a checkpoint without a \"bundle\"; it was not written by glioseg train")
        bundles[checkpoint] = ModelBundle.from_state(state["bundle"], sha256=file_sha256(checkpoint))
        facts = training_facts(checkpoint, state, results, own_hours=len(files) > 1)
        members.append({**facts, "label": released.member_label(name, file), "file": file,
                        "checkpoint": str(checkpoint)})
    check_members(bundles)
    return list(bundles.values()), members


def _entry(files: list[str], bundles: list[ModelBundle], members: list[dict], card_files: dict, agreement: dict,
           results: ReleaseResults) -> dict:
    single = len(files) == 1
    item = {"weights": files[0] if single else files, "files": card_files, "model": bundles[0].model,
            "options": dict(bundles[0].options), "params": count_parameters(bundles[0].build_model()),
            "dtype": agreement["dtype"], "fp16_agreement": agreement["min_dice"], "dice": dice_summary(results),
            "dice_method": results.method, "training_cases": union_cases(members),
            "source_sha256": bundles[0].sha256 if single else [b.sha256 for b in bundles],
            "glioseg_version": __version__}
    if not single:
        item["member_training_cases"] = {m["file"]: m["cases"] for m in members}
    if bundles[0].postprocess_config.active:
        item["postprocess"] = bundles[0].postprocess_config.to_dict()
    if bundles[0].tta:
        item["tta"] = True
    return item


def build_release(checkpoints: Sequence[Path | str] | Path | str, name: str, results_file: Path | str,
                  cases: Sequence[Path], root: Path | None = None, replace_existing: bool = False,
                  fp16_threshold: float = FP16_AGREEMENT, postprocess: PostprocessConfig | None = None,
                  tta: bool = False) -> dict:
    """Write ``root/<name>/`` and its index entry from glioseg training checkpoints (one, or the
    fold models of an ensemble in fold order); returns the entry. ``postprocess``: the
    post-processing chosen by the cross-validation (``glioseg experiment postprocess``), written
    into every member's bundle so that ``predict --model`` applies it; ``tta``: predict flips by
    default (the choice was made on flipped probabilities)."""
    checkpoints = [Path(checkpoints)] if isinstance(checkpoints, (str, Path)) else [Path(c) for c in checkpoints]
    root = Path(root or released.package_root())
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(f"release name {name!r}: use lower-case letters, digits, '-' and '.' (e.g. segresnet-brats18)")
    if (root / name).exists() and not replace_existing:
        raise InputError(f"{root / name}: a released model of that name exists; pass --replace to rebuild it")
    if not checkpoints:
        raise InputError("give at least one checkpoint")
    if len(set(c.resolve() for c in checkpoints)) != len(checkpoints):
        raise InputError(f"a checkpoint is given twice: {', '.join(map(str, checkpoints))}")
    if not cases:
        raise InputError("give at least one case to measure fp16 against fp32 on")
    results = read_results(results_file)
    files = member_files(name, len(checkpoints))
    bundles, members = _read_members(name, checkpoints, files, results)
    if postprocess is not None:
        bundles = [replace(b, postprocess=postprocess.to_dict()) for b in bundles]
    bundles = [replace(b, tta=tta) for b in bundles]
    check_fold_order(members, results)
    agreement = fp16_agreement(bundles, cases, fp16_threshold)
    card = render_card(name, bundles[0], members, results, agreement)
    root.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".part-{name}.", dir=root))
    part.chmod(0o755)  # mkdtemp's 0700 would travel into the package
    try:
        card_files = _write_folder(part, files, bundles, card, agreement["dtype"])
        _move_into_place(part, root / name)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    item = _entry(files, bundles, members, card_files, agreement, results)
    _update_index(root, name, item)
    log.info("released %s in %s (%d member(s), %s weights)", name, root / name, len(files), agreement["dtype"])
    return item
