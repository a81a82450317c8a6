"""Build a released model from a training checkpoint (used by ``tools/release_model.py``).

``build_release`` writes ``ROOT/<name>/`` (weights as safetensors + the bundle's JSON config via
:func:`glioseg.inference.export.write_released`, and ``MODEL_CARD.md``) under a ``.part-`` name,
renames it into place, and records each file's SHA-256 in ``ROOT/index.json``
(:mod:`glioseg.inference.released` reads and checks them).

Weights are stored in fp16 only when the fp16-rounded model's labels agree with the fp32 model's
at Dice ≥ :data:`FP16_AGREEMENT` in every region on every given case (default ``glioseg predict``
windows); otherwise in fp32. The measured figures go into the card and the index.
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
from glioseg.inference.model_card import ReleaseResults, dice_summary, read_results, render_card
from glioseg.inference.predictor import PredictConfig, Predictor, TorchNetwork
from glioseg.models.registry import count_parameters

log = logging.getLogger(__name__)

FP16_AGREEMENT = 0.999
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")


def half_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors rounded to fp16 (what an fp16 release stores); others unchanged."""
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}


def _regions(predictor: Predictor, array: np.ndarray, meta: dict, site: str | None) -> np.ndarray:
    probs, _ = predictor.case_probabilities(array, meta, site)
    return predictor.bundle.output.to_regions(probs)


def fp16_agreement(bundle: ModelBundle, cases: Sequence[Path], threshold: float = FP16_AGREEMENT) -> dict:
    """Per-case, per-region Dice between the labels of the fp32 and the fp16-rounded weights."""
    items = inputs.collect(list(cases), {}, None, bundle.channels, None, bundle.scheme)
    config = PredictConfig()
    full = Predictor([TorchNetwork(bundle)], config)
    half = Predictor([TorchNetwork(replace(bundle, weights=half_weights(bundle.weights)))], config)
    per_case = {}
    for item in items:
        image, _ = load_case(item.case, item.dataset)
        array, _, meta = preprocess.preprocess_case(image, None, item.case, bundle.preprocess_config(),
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


def training_cases(state: dict) -> list[str] | None:
    """The case ids the checkpoint's run trained on (its saved split), so that users can tell a
    training case's Dice from a held-out one; None for a checkpoint without a split."""
    split = state.get("split")
    return sorted(split["train"]) if split else None


def training_facts(checkpoint: Path, state: dict, results: ReleaseResults) -> dict:
    """Recipe, steps, hours, hardware, precisions and training cases of the run that wrote ``checkpoint``."""
    run = RunFiles(checkpoint.parent)
    summary = run.read_summary()
    steps_in = summary.get("steps_per_precision") if summary else None
    hours = results.hours if results.hours is not None else run.hours()
    return {"config": state["config"], "steps": int(state["progress"]["step"]), "hours": hours,
            "hardware": results.hardware, "precision_steps": steps_in, "versions": state.get("versions", {}),
            "cases": training_cases(state)}


def _write_folder(part: Path, name: str, bundle: ModelBundle, card: str, dtype: str) -> dict[str, str]:
    cast = half_weights if dtype == "float16" else (lambda w: {k: v.float() if v.is_floating_point() else v
                                                               for k, v in w.items()})
    write_released(replace(bundle, weights=cast(bundle.weights)), part / f"{name}.safetensors")
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
    write_json(root / released.INDEX, index, sort_keys=True, end="\n")


def build_release(checkpoint: Path | str, name: str, results_file: Path | str, cases: Sequence[Path],
                  root: Path | None = None, replace_existing: bool = False,
                  fp16_threshold: float = FP16_AGREEMENT) -> dict:
    """Write ``root/<name>/`` and its index entry from a glioseg training checkpoint; returns the entry."""
    checkpoint, root = Path(checkpoint), Path(root or released.package_root())
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(f"release name {name!r}: use lower-case letters, digits, '-' and '.' (e.g. segresnet-brats18)")
    if (root / name).exists() and not replace_existing:
        raise InputError(f"{root / name}: a released model of that name exists; pass --replace to rebuild it")
    if not cases:
        raise InputError("give at least one case to measure fp16 against fp32 on")
    results = read_results(results_file)
    state = load_checkpoint(checkpoint)
    bundle = ModelBundle.from_state(state["bundle"], sha256=file_sha256(checkpoint))
    agreement = fp16_agreement(bundle, cases, fp16_threshold)
    training = training_facts(checkpoint, state, results)
    card = render_card(name, bundle, training, results, agreement)
    root.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".part-{name}.", dir=root))
    part.chmod(0o755)  # mkdtemp's 0700 would travel into the package
    try:
        files = _write_folder(part, name, bundle, card, agreement["dtype"])
        _move_into_place(part, root / name)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    item = {"weights": f"{name}.safetensors", "files": files, "model": bundle.model,
            "options": dict(bundle.options), "params": count_parameters(bundle.build_model()),
            "dtype": agreement["dtype"], "fp16_agreement": agreement["min_dice"], "dice": dice_summary(results),
            "dice_method": results.method,
            "training_cases": training["cases"], "source_sha256": bundle.sha256, "glioseg_version": __version__}
    _update_index(root, name, item)
    log.info("released %s in %s (%s weights)", name, root / name, agreement["dtype"])
    return item
