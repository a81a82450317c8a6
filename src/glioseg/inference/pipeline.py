"""Prediction of whole cases: files → preprocessing → windows → labels in the scanner's geometry → files.

One case: read the channels the model names, apply the preprocessing recorded with the model
(``glioseg.data.preprocess``: RAS, brain box, z-score; resampled to the model's spacing where the
case's differs, :mod:`glioseg.inference.spacing`), predict in cache space, turn regions
into the input dataset's labels, map back with ``to_original`` (the preprocessing's exact
inverse) and write through :mod:`glioseg.inference.writer`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from glioseg import __version__
from glioseg.data import preprocess
from glioseg.data.cases import load_case
from glioseg.data.errors import DataError
from glioseg.data.labels import region_volumes_ml
from glioseg.errors import GliosegError, InputError
from glioseg import files
from glioseg.evaluation import segment_files
from glioseg.files import file_sha256
from glioseg.inference import writer
from glioseg.inference.inputs import CaseInput
from glioseg.inference.postprocess import postprocess_label
from glioseg.inference.predictor import PredictConfig, Predictor, open_network
from glioseg.inference.spacing import plan as spacing_plan, preprocess_config as spacing_config, \
    unknown_spacing_warning

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"   # held by the run predicting into a folder (files.exclusive_lock)

@dataclass(frozen=True)
class OutputOptions:
    probabilities: bool = False
    uncertainty: bool = False

    def names(self) -> list[str]:
        return ["label", "segments"] + [n for n in ("probabilities", "uncertainty") if getattr(self, n)]


def input_digests(case) -> dict[str, dict[str, str]]:
    """Path and SHA-256 of each channel file (the form ``preprocess_case`` records)."""
    return {c: {"path": str(p), "sha256": file_sha256(p)} for c, p in case.images.items()}


def request_of(item: CaseInput, digests: dict, predictor: Predictor, options: OutputOptions) -> dict:
    """What determines a case's outputs; a re-run with the same request may skip the case."""
    config = predictor.config   # the settings as resolved (precision, flips)
    return {
        "inputs": {c: d["sha256"] for c, d in digests.items()},
        "models": [net.bundle.sha256 for net in predictor.networks],
        "scheme": item.scheme.name,
        "settings": {"window": config.window if isinstance(config.window, str) else list(config.window),
                     "overlap": config.overlap, "tta": config.tta,
                     # the precision used, not the policy: a case done in bf16 is not skipped by a
                     # run that computes fp32, so a resumed folder never mixes the two
                     "precision": config.precision, "precision_policy": predictor.requested_precision,
                     "postprocess": predictor.postprocess.to_dict()},
        "outputs": options.names(),
    }


def _write_outputs(item: CaseInput, out: Path, probs: np.ndarray, meta: dict, image,
                   predictor: Predictor, options: OutputOptions, stage) -> tuple[dict, np.ndarray]:
    """Label map (and optional maps) in the original geometry; returns (outputs record, label)."""
    bundle, case_id = predictor.bundle, item.case.case_id
    label = preprocess.to_original(bundle.output.label_map(probs, item.scheme, predictor.postprocess.thresholds),
                                   meta, order=0)
    # in the scan's own geometry, where the volumes that the thresholds were chosen on were measured
    label = postprocess_label(label, item.scheme, image.spacing, predictor.postprocess)
    maps = {"label": label}
    if options.probabilities:
        region_probs = bundle.output.region_probabilities(probs)
        original = preprocess.to_original(region_probs.astype(np.float32), meta, order=1)
        maps["probabilities"] = np.ascontiguousarray(np.moveaxis(original, 0, -1), dtype=np.float32)
    if options.uncertainty:
        entropy = bundle.output.entropy(probs)
        maps["uncertainty"] = preprocess.to_original(entropy, meta, order=1).astype(np.float32)
    record = {}
    for what, array in maps.items():
        path = writer.output_path(out, case_id, what)
        try:
            digest = writer.write_verified(stage(path), array, image)
        except OSError as exc:  # a full disk: the case unit leaves nothing at a final path
            raise DataError(path, f"cannot write {what} ({array.nbytes / 2**20:.0f} MiB uncompressed): "
                                  f"{exc.strerror or exc}; none of the case's outputs was written") from None
        record[what] = {"file": str(path.relative_to(out)), "sha256": digest, "shape": list(array.shape),
                        "dtype": str(array.dtype)}
    path = writer.output_path(out, case_id, "segments")
    try:
        digest = segment_files.write_seg_nrrd(stage(path), label, image.affine, item.scheme)
    except OSError as exc:
        raise DataError(path, f"cannot write the Slicer segmentation: {exc.strerror or exc}; none of the "
                              "case's outputs was written") from None
    record["segments"] = {"file": str(path.relative_to(out)), "sha256": digest, "format": "3D Slicer .seg.nrrd"}
    return record, label


def predict_case(item: CaseInput, predictor: Predictor, out: Path, options: OutputOptions,
                 request: dict, digests: dict) -> dict:
    """Predict one case and write its outputs and sidecar; returns the sidecar record."""
    case, bundle = item.case, predictor.bundle
    times = {"start": time.perf_counter()}
    image, _ = load_case(case, item.dataset)
    times["load"] = time.perf_counter()
    spacing = spacing_plan(bundle, image.affine, image.shape[-3:])
    if spacing.resampled:
        log.info("%s: %s", case.case_id, spacing.describe())
    array, _, meta = preprocess.preprocess_case(image, None, case, spacing_config(bundle, spacing),
                                                channels=item.dataset.channels, inputs=digests)
    times["preprocess"] = time.perf_counter()
    probs, stats = predictor.case_probabilities(array, meta, case.site)
    times["inference"] = time.perf_counter()
    # One unit: the maps and the sidecar reach their final names together or not at all.
    with writer.case_unit() as stage:
        outputs, label = _write_outputs(item, out, probs, meta, image, predictor, options, stage)
        times["write"] = time.perf_counter()
        record = _record(item, predictor, request, digests, times, stats, outputs, label, image, meta)
        record["spacing"] = {**spacing.to_dict(), "note": spacing.describe()}
        if options.uncertainty:
            record["uncertainty"] = bundle.output.entropy_meaning
        writer.write_sidecar(stage(writer.sidecar_path(out, case.case_id)), record)
    return record


def _record(item: CaseInput, predictor: Predictor, request: dict, digests: dict, times: dict, stats,
            outputs: dict, label: np.ndarray, image, meta: dict) -> dict:
    """The sidecar: what was asked, what ran, how long each step took, what was written."""
    case = item.case
    steps = ("start", "load", "preprocess", "inference", "write")
    return {
        "case": case.case_id, "glioseg_version": __version__, "request": request, "inputs": digests,
        "models": [{"file": str(net.source), "sha256": net.bundle.sha256, "model": net.bundle.model,
                    "runtime": net.kind, "target": net.bundle.target} for net in predictor.networks],
        "label_scheme": item.scheme.name, "site": case.site,
        "run": {"precision": predictor.config.precision, "precision_choice": predictor.precision_choice.reason,
                "window": stats.window_size, "window_notes": predictor.window_notes,
                "overlap": predictor.config.overlap, "tta": predictor.config.tta, "windows_run": stats.windows,
                "sw_batch_size": stats.sw_batch_size, "device": predictor.config.device,
                "stitching": stats.stitching, "fp32_reruns": stats.fp32_reruns, "oom_retries": stats.oom_retries},
        "timings_s": {b: round(times[b] - times[a], 3) for a, b in zip(steps, steps[1:])},
        "volumes_ml": region_volumes_ml(label, item.scheme, image.spacing),
        "geometry": {"shape": list(label.shape), "affine": image.affine.tolist(), "orientation": image.orientation},
        "cache_box": meta["crop"]["box"],
        "outputs": outputs,
    }


def _one(item: CaseInput, predictor: Predictor, out: Path, options: OutputOptions) -> str:
    digests = input_digests(item.case)
    request = request_of(item, digests, predictor, options)
    if writer.is_complete(out, item.case.case_id, request):
        return "skipped"
    record = predict_case(item, predictor, out, options, request, digests)
    vols = record["volumes_ml"]
    log.info("%s: WT %.1f mL, TC %.1f mL, ET %.1f mL in %.1f s", item.case.case_id, vols["WT"], vols["TC"],
             vols["ET"], sum(record["timings_s"].values()))
    return "done"


def predict_all(items: Sequence[CaseInput], predictor: Predictor, out: Path | str,
                options: OutputOptions = OutputOptions()) -> dict[str, int]:
    """Predict every case into ``out``; verified-complete cases are skipped.

    A failing case does not stop the others; all failures are raised together at the end.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One run per folder: a second one would remove the first's .part- files as stale (#23).
    unknown = unknown_spacing_warning(predictor.bundle, predictor.networks[0].source)
    if unknown:
        log.warning("%s", unknown)
    with files.exclusive_lock(out / LOCK_FILE, f"prediction folder {out}"):
        writer.clean_parts(out)
        counts, errors = _predict_items(items, predictor, out, options)
    log.info("predict %s: %d predicted, %d already complete (skipped), %d failed", out,
             counts["done"], counts["skipped"], counts["failed"])
    if errors:
        raise InputError(f"{len(errors)} of {len(items)} cases failed (the others are written; rerun to "
                         "resume): " + "; ".join(errors))
    return counts


def _predict_items(items: Sequence[CaseInput], predictor: Predictor, out: Path,
                   options: OutputOptions) -> tuple[dict[str, int], list[str]]:
    counts, errors, schemes = {"done": 0, "skipped": 0, "failed": 0}, [], {}
    for item in tqdm(items, desc="predict", unit="case"):
        try:
            counts[_one(item, predictor, out, options)] += 1
            schemes[item.scheme.name] = item.scheme
        except (GliosegError, OSError) as exc:   # a bad case; a bug still stops the run
            counts["failed"] += 1
            errors.append(f"{item.case.case_id}: {exc}")
            log.error("%s", errors[-1])
    for scheme in schemes.values():  # label names and colours for Slicer and ITK-SNAP, beside the maps
        segment_files.write_tables(out, scheme)
    return counts, errors


def make_predictor(checkpoints: Sequence[Path], config: PredictConfig) -> Predictor:
    """Networks for every model file (.pt / .safetensors / .json → PyTorch, .onnx → onnxruntime)."""
    return Predictor([open_network(Path(p), config.device) for p in checkpoints], config)
