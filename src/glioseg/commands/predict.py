"""``glioseg predict [INPUT ...] --model NAME | --checkpoint CKPT [CKPT ...] --out DIR [options]``.

The arguments become typed values here (model files told apart from inputs, the window, the
device checked first); the work is :mod:`glioseg.inference.pipeline`'s.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from glioseg.data.formats import CHANNELS
from glioseg.devices import checked_device
from glioseg.errors import InputError
from glioseg.files import refuse_inside
from glioseg.inference import inputs as case_inputs
from glioseg.inference.model_ref import is_model_file, released_model, resolve_model
from glioseg.inference.pipeline import OutputOptions, make_predictor, predict_all
from glioseg.inference.predictor import WINDOWS, PredictConfig

log = logging.getLogger(__name__)


def split_models_and_inputs(checkpoints: Sequence[Path], inputs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``--checkpoint a.pt b.pt DATA`` reads DATA into the checkpoint list (argparse is greedy);
    model files are told apart from inputs by what they are, so both spellings work."""
    models = [Path(p) for p in checkpoints if is_model_file(Path(p))]
    rest = [Path(p) for p in checkpoints if not is_model_file(Path(p))]
    missing = [str(p) for p in rest if not p.exists()]
    if missing:
        raise InputError(f"no such model file or input: {', '.join(missing)}")
    return models, rest + [Path(p) for p in inputs]


def _window_arg(values: Sequence[str] | None) -> str | tuple[int, int, int]:
    """``--roi``: a window name of :data:`WINDOWS` or three sizes (default: the config's)."""
    if not values:
        return PredictConfig.window
    if len(values) == 1 and values[0] in WINDOWS:
        return values[0]
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise InputError(f"--roi takes {' or '.join(WINDOWS)} or three sizes; got {' '.join(values)}") from None


def model_files(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(model files, inputs) of the command line: --checkpoint, --onnx and --model in that order."""
    folders = [Path(p) for p in [*(args.checkpoint or []), *(args.onnx or [])] if Path(p).is_dir()]
    models, paths = split_models_and_inputs(args.checkpoint or [], args.input or [])
    models += [Path(p) for p in args.onnx or []]
    models += [file for name in args.model or [] for file in released_model(name).files]  # every member
    if not models:
        if folders:
            resolve_model(folders[0])   # says what the folder holds
        raise InputError("no model: give --model NAME (glioseg models --released), --checkpoint CKPT "
                         "(.pt, .safetensors) or --onnx FILE.onnx")
    return models, paths


def run(args: argparse.Namespace) -> int:
    models, paths = model_files(args)
    named = [Path(p).parent for p in (getattr(args, c, None) for c in CHANNELS) if p is not None]
    refuse_inside(args.out, [*paths, *named])
    checked_device(args.device)
    config = PredictConfig(window=_window_arg(args.roi), overlap=args.overlap, tta=args.tta,
                           precision=args.precision, sw_batch_size=args.sw_batch_size, device=args.device,
                           postprocess=args.postprocess)
    predictor = make_predictor(models, config)
    files = {c: getattr(args, c, None) for c in CHANNELS}
    items = case_inputs.collect(paths, files, args.case_id, predictor.bundle.channels, args.scheme,
                                predictor.bundle.scheme, allow_duplicates=args.allow_duplicate_channels)
    log.info("%d case(s), %d model(s), labels written in the %s convention", len(items), len(models),
             ", ".join(sorted({i.scheme.name for i in items})))
    options = OutputOptions(probabilities=args.probabilities, uncertainty=args.uncertainty)
    counts = predict_all(items, predictor, args.out, options)
    print(f"predict {args.out}: {counts['done']} predicted, {counts['skipped']} already complete")
    if args.report:
        from glioseg.evaluation.report import report_case, write_report  # matplotlib only when asked

        cases = [report_case(item.case, item.scheme, args.out) for item in items]
        path = write_report(Path(args.out) / "report.html", cases=[c for c in cases if c is not None],
                            title=f"glioseg predictions in {Path(args.out).name}", max_cases=args.max_cases)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
