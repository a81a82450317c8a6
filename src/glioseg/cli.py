"""Command-line interface: argument parsing only; each subcommand calls one function.

That function is ``run`` of the subcommand's module in ``glioseg.commands``, imported once the
arguments are parsed (:func:`run_command`), so that ``glioseg --help`` stays fast and a
subcommand pays only for the engines it uses.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from glioseg import __version__
from glioseg.data.budget import DEFAULT_MAX_IMAGE_MB, MAX_IMAGE_MB_ENV
from glioseg.errors import GliosegError

log = logging.getLogger("glioseg")

# The engines' vocabularies, spelled here so that --help imports no engine (torch alone takes
# seconds); tests/test_cli_vocabulary.py pins each to the one its engine defines.
FORMATS = ("auto", "msd", "brats", "brats2023", "manifest")     # glioseg.data.formats.FORMATS
SCHEMES = ("msd", "brats", "brats2023", "brats2013")            # glioseg.data.labels.SCHEMES
PRECISION_POLICIES = ("auto", "fp32", "bf16", "fp16")           # glioseg.precisions.POLICIES
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")         # glioseg.inference.export.FORMATS
MISSING_POLICIES = ("error", "empty", "skip")                   # glioseg.evaluation.evaluate.MISSING_POLICIES
METRIC_SETS = ("region", "lesion-2023", "lesion-2024", "lesion-2025")  # glioseg.evaluation.lesion_scores.METRICS
CONVENTIONS = ("radiological", "neurological")                  # glioseg.evaluation.figures.CONVENTIONS
EXECUTORS = ("local", "slurm")                                  # glioseg.experiments.executors.EXECUTORS
CHANNELS = ("flair", "t1", "t1ce", "t2")                        # glioseg.data.formats.CHANNELS


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every case of a dataset (or several) and print a table")
    p.add_argument("data", type=Path, nargs="+",
                   help="dataset folder (MSD, BraTS, BraTS 2023+) or manifest file; several: each reported, then all")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--json", type=Path, help="also write the per-case report as JSON here")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0: one per core)")


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="reorient, crop, normalise and cache a dataset (or several, as one)")
    p.add_argument("data", type=Path, nargs="+", help="dataset folder(s) or manifest(s); several make one cache")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="resample to this spacing in mm (default: keep the native spacing)")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0: one per core)")


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write a synthetic BraTS-layout dataset")
    p.add_argument("out", type=Path)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="volume shape (default: the BraTS grid 240 240 155)")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered networks with parameters and FLOPs")
    p.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96], metavar=("X", "Y", "Z"))
    p.add_argument("--out-channels", type=int, default=3,
                   help="output channels (3: WT/TC/ET regions; 4: the DALight-3D paper's classes)")
    p.add_argument("--json", type=Path)
    p.add_argument("--released", action="store_true",
                   help="list the trained models shipped with glioseg instead (name, network, members, Dice, size)")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="copy the bundled real BraTS case (TCIA, CC BY 3.0) into OUT/<case>/")
    p.add_argument("out", type=Path, help="folder to put the case folder in (created; never overwritten)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions against reference labels (Dice, HD95, volumes)")
    p.add_argument("--pred", type=Path, required=True, help="folder of <case>.nii.gz label maps")
    p.add_argument("--ref", type=Path, nargs="+", required=True,
                   help="reference dataset(s) (any layout) with label files; several are scored together, "
                        "each case in its own dataset's label convention, with a summary per dataset")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv, summary.json, report.html")
    p.add_argument("--format", choices=FORMATS, default="auto", help="layout of --ref")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (0: one per core)")
    p.add_argument("--missing", choices=MISSING_POLICIES, default="error",
                   help="reference cases without a prediction: fail (default), score as empty, or leave out")
    p.add_argument("--metrics", type=_metric_sets, default=("region",), metavar="SET[,SET...]",
                   help=f"comma-separated metric sets of {', '.join(METRIC_SETS)}: region (Dice, HD95, "
                        "volumes; always computed) and the BraTS lesion-wise metrics of 2023, 2024 and 2025+ "
                        "(lesion_metrics.csv, lesions.csv)")
    p.add_argument("--max-cases", type=int, default=20, help="cases drawn in the report (tables list all)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-viewer", action="store_true", help="report without the interactive 3D viewer")


def _metric_sets(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METRIC_SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric set(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(METRIC_SETS)}")
    return names


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML report (overlays, metrics, curves)")
    p.add_argument("--data", type=Path, help="dataset whose images (and reference labels) are drawn")
    p.add_argument("--format", choices=FORMATS, default="auto", help="layout of --data")
    p.add_argument("--pred", type=Path, help="folder of <case>.nii.gz predictions to overlay (needs --data)")
    p.add_argument("--metrics", type=Path, help="folder with metrics.csv / summary.json from glioseg evaluate")
    p.add_argument("--run", type=Path, help="training run folder (metrics.csv, precision_events.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--max-cases", type=int, default=20, help="cases drawn (the tables list all)")
    p.add_argument("--convention", choices=CONVENTIONS, default="radiological")
    p.add_argument("--title", default="glioseg report")
    p.add_argument("--no-viewer", action="store_true", help="without the interactive 3D viewer (smaller file)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a network (patch sampling, precision controller, checkpoints)")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="dataset folder, manifest, or a glioseg cache; several datasets are trained on as one")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--model", help="registered network (see `glioseg models`)")
    p.add_argument("--recipe", help="shipped recipe: segresnet-brats or dalight3d-paper (default by model)")
    p.add_argument("--config", type=Path, help="YAML file of settings; overrides the recipe")
    p.add_argument("--precision", choices=PRECISION_POLICIES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (0: each epoch)")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--cache", type=Path, help="where to build the preprocessed cache (default RUN/cache)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--allow-other-data", action="store_true",
                   help="with --resume: continue on data other than the run started on (cases added or "
                        "removed, changed files); without it that is refused, naming the differences")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment cases and write label maps in the input's geometry")
    p.add_argument("input", nargs="*", type=Path, metavar="INPUT",
                   help="dataset folder (any layout), case folder, or manifest; or use --flair ... --case-id")
    p.add_argument("--checkpoint", nargs="+", type=Path, metavar="CKPT",
                   help="training checkpoint(s) .pt, released .safetensors/.json or .onnx; several are "
                        "an ensemble (probabilities averaged)")
    p.add_argument("--onnx", nargs="+", type=Path, metavar="FILE", help="ONNX model(s) run with onnxruntime")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="a released model by name (glioseg models --released); repeat it, or add --checkpoint "
                        "/ --onnx, for an ensemble")
    p.add_argument("--out", type=Path, required=True, help="output folder: <case>.nii.gz + <case>.json")
    for channel in CHANNELS:
        p.add_argument(f"--{channel}", type=Path, metavar="FILE", help=f"the {channel} image of one case")
    p.add_argument("--case-id", help="name of the case given by modality files")
    p.add_argument("--allow-duplicate-channels", action="store_true",
                   help="let two modality flags name the same file (a warning instead of an error)")
    p.add_argument("--scheme", choices=SCHEMES,
                   help="label convention to write (default: the input dataset's; for modality files "
                        "the model's)")
    p.add_argument("--roi", nargs="+", metavar="SIZE",
                   help="window: 'box' (default: one window over the brain box), 'patch' (the training "
                        "patch), 'volume' (one window over the whole volume, as MONAI's BraTS recipe: its "
                        "labels, at 2-3x the work), or X Y Z")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap when several windows are needed")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 axis-flip combinations (8x the network's time); default: the "
                        "model's (a released model says in its card whether its figures used flips)")
    p.add_argument("--precision", choices=PRECISION_POLICIES, default="auto",
                   help="auto (default): bf16 where the device runs it natively (AVX512-BF16/AMX CPU, "
                        "GPU), else fp32: the capability decides, so every run gives the same labels; "
                        "non-finite windows are re-run in fp32, stitching is fp32")
    p.add_argument("--sw-batch-size", type=int, default=1, help="windows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--postprocess", choices=("model", "none"), default="model",
                   help="model (default): the post-processing the model carries, chosen by its "
                        "cross-validation (small tumour components removed, a small ET relabelled core; "
                        "glioseg models --released says which); none: the network's labels as they are")
    p.add_argument("--probabilities", action="store_true",
                   help="also write WT/TC/ET probabilities (float32, X×Y×Z×3) to DIR/probabilities/")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write a normalised entropy map (float32, 0..1) to DIR/uncertainty/")
    p.add_argument("--report", action="store_true",
                   help="also write DIR/report.html: the predictions over the images, with the 3D viewer")
    p.add_argument("--max-cases", type=int, default=20, help="cases drawn in the --report")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or safetensors + JSON")
    p.add_argument("checkpoint", help="training checkpoint .pt, released .safetensors, or a released model's name")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True,
                   help="output file (.onnx, .ts.pt, .safetensors); a released ensemble writes one file per "
                        "member beside it: OUT-fold0.onnx, OUT-fold1.onnx, ...")
    p.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="fix the exported graph's window (default: any window, multiples of the "
                        "network's size divisor, so predict runs the checkpoint's windows)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed difference to PyTorch")


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="compare arms (models, recipes, precisions) fairly, with paired statistics")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run (or continue) every run of a spec, then write the report")
    run.add_argument("spec", help="spec file (YAML) or shipped spec name (glioseg experiment list)")
    run.add_argument("--out", type=Path, required=True, help="experiment folder")
    run.add_argument("--budget", default="cpu", help="budget of the spec to use (cpu, paper, ...)")
    run.add_argument("--data", nargs="+", help="dataset(s) to use instead of the spec's data")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local processes (default) or Slurm through submitit")
    run.add_argument("--jobs", type=int, default=1, help="runs at once with --executor local")
    run.add_argument("--max-runs", type=int, metavar="N",
                     help="start at most N of the runs left, those already begun first, then stop (on a "
                          "machine lent for a limited time: the same command continues later)")
    run.add_argument("--dry-run", action="store_true", help="check the spec and print the plan; train nothing")
    status = actions.add_parser("status", help="how far each arm's runs have got")
    status.add_argument("dir", type=Path)
    report = actions.add_parser("report", help="write DIR/report/report.md and report.html from the finished runs")
    report.add_argument("dir", type=Path)
    report.add_argument("--out", type=Path, help="report folder (default DIR/report)")
    actions.add_parser("list", help="the shipped specs")
    post = actions.add_parser("postprocess", help="choose the post-processing on an arm's held-out predictions "
                                                  "(small components, small ET) and measure its nested gain")
    post.add_argument("dir", type=Path, help="experiment folder (its runs' predictions must be there)")
    post.add_argument("--arm", help="the arm (default: the spec's reference)")
    post.add_argument("--data", type=Path, nargs="+",
                      help="the dataset(s) with the reference labels, if not where the experiment read them")
    post.add_argument("--thresholds", nargs="+", choices=("WT", "TC", "ET"), metavar="REGION",
                      help="also choose these regions' probability thresholds (WT, TC, ET; the others stay 0.5): "
                           "the runs' checkpoints predict their held-out cases once more, with probabilities, "
                           "into RUN/held-out-probabilities")
    post.add_argument("--tta", action="store_true",
                      help="choose on probabilities averaged over the 8 axis flips (predict --tta; "
                           "RUN/held-out-probabilities-tta), measured against the labels without flips; "
                           "writes results/postprocess-ARM-tta.json")
    compare = actions.add_parser("compare", help="an arm of one experiment against an arm of another, paired per "
                                                 "case (the same cases in the same folds)")
    compare.add_argument("a", type=Path, help="experiment folder of the reference side A")
    compare.add_argument("b", type=Path, help="experiment folder of side B (may be A's, with another --arm-b)")
    compare.add_argument("--arm-a", help="A's arm (default: A's reference)")
    compare.add_argument("--arm-b", help="B's arm (default: B's reference)")
    compare.add_argument("--out", type=Path, help="also write the comparison to this Markdown file (+ .html beside it)")
    curve = actions.add_parser("curve", help="held-out Dice against training steps: every snapshot of an arm's "
                                             "fold models (snapshot_every) predicts its held-out cases")
    curve.add_argument("dir", type=Path, help="experiment folder (its runs' snapshots must be there)")
    curve.add_argument("--arm", help="the arm (default: the spec's reference)")
    curve.add_argument("--data", type=Path, nargs="+", help="the dataset(s), if not where the experiment read them")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="a released model on the bundled real case, then the pipeline on phantoms")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--model", help="released model of part (a) (default: segresnet-brats, else the first)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 72], metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glioseg", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--max-image-mb", type=float, metavar="MB",
                        help=f"refuse a NIfTI file whose header claims more decoded voxel data than this, "
                             f"before reading it (default {DEFAULT_MAX_IMAGE_MB}; also ${MAX_IMAGE_MB_ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_sample, _add_phantom, _add_verify, _add_preprocess, _add_models, _add_train,
                _add_evaluate, _add_report, _add_predict, _add_export, _add_experiment):
        add(sub)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command line through its module in ``glioseg.commands``; the exit code."""
    name = args.command
    if name == "demo":
        from glioseg.commands import demo

        return demo.run(args, main)  # the demo runs its steps through this same entry point
    if name == "sample":
        from glioseg.commands import sample as command
    elif name == "phantom":
        from glioseg.commands import phantom as command
    elif name == "verify":
        from glioseg.commands import verify as command
    elif name == "preprocess":
        from glioseg.commands import preprocess as command
    elif name == "models":
        from glioseg.commands import models as command
    elif name == "train":
        from glioseg.commands import train as command
    elif name == "evaluate":
        from glioseg.commands import evaluate as command
    elif name == "report":
        from glioseg.commands import report as command
    elif name == "predict":
        from glioseg.commands import predict as command
    elif name == "export":
        from glioseg.commands import export as command
    else:
        from glioseg.commands import experiment as command
    return int(command.run(args) or 0)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), raised where the command is, so that it stops as Ctrl-C stops it:
    its ``finally`` blocks and its workers' shutdown run, and a background run stops cleanly."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _message(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return (f"out of memory{f': {exc}' if str(exc) else ''}; free memory, use fewer --workers, or "
                "lower --max-image-mb to refuse large images before reading them")
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.max_image_mb is not None:
        if not args.max_image_mb > 0:
            log.error("--max-image-mb is %g; expected a positive number of MiB", args.max_image_mb)
            return 2
        # Through the environment, so that worker processes read files under the same budget.
        os.environ[MAX_IMAGE_MB_ENV] = repr(args.max_image_mb)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return _guarded(args)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _guarded(args: argparse.Namespace) -> int:
    """The command, its failures turned into a message and an exit code."""
    try:
        return run_command(args)
    except Terminated:
        log.error("terminated")
        return 143
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (GliosegError, OSError, MemoryError) as exc:
        # The input or the machine: the message names the file and the problem; --debug adds the traceback.
        if args.debug:
            raise
        log.error("%s", _message(exc))
        return 2
    except Exception:
        # Anything else is a bug of glioseg, not of the input: the traceback is what a report needs.
        if args.debug:
            raise
        traceback.print_exc()
        log.error("internal error of glioseg %s (a bug, not a problem of the input); please report it "
                  "with the traceback above", __version__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
