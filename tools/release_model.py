"""Add (or rebuild) a released model in the package from glioseg training checkpoints.

    PYTHONPATH=src python tools/release_model.py RUN/best.pt --name segresnet-brats18 \
        --results cv_results.json \
        --cases ../shared/data/brats18/Brats18_TCIA03_265_1 ../shared/data/brats18/Brats18_CBICA_ABM_1 \
        [--replace] [--root src/glioseg/released]

    # an ensemble: the fold models of a cross-validation, in fold order
    PYTHONPATH=src python tools/release_model.py EXP/runs/release/fold{0,1,2}-seed0/last.pt \
        --name segresnet-brats --results results.json --cases ... --replace \
        --postprocess EXP/results/postprocess-release.json   # glioseg experiment postprocess's choice

Writes ``src/glioseg/released/<name>/`` (``<name>.safetensors`` + ``<name>.safetensors.json`` +
``MODEL_CARD.md``; several checkpoints: ``<name>-fold0.safetensors`` + its ``.json``,
``<name>-fold1...``, one ensemble that ``glioseg predict --model NAME`` averages) and the name's
entry, with each file's SHA-256, in ``src/glioseg/released/index.json``; then commit that folder and
the index. The members must agree on channels, labels, output, preprocessing and architecture;
where the results say which fold held out each case, member ``fold<k>`` (the k-th checkpoint) must
not have trained on it. ``--results`` is the
JSON of measured Dice described in ``glioseg.inference.model_card`` (method, hardware, Dice per
region with sd, optional hours, commands and markdown notes). ``--cases`` (case folders or
datasets with the four modalities) are predicted with fp32 and with fp16-rounded weights (of the
whole ensemble): fp16 is stored only if the labels agree at Dice >= 0.999 in every region on every case. This is a
maintainer's tool, not a ``glioseg`` command: users only read released models.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glioseg.errors import GliosegError
from glioseg.inference.postprocess import chose_with_flips, read_postprocess
from glioseg.inference.release_build import build_release


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, nargs="+",
                   help="training checkpoint(s) written by glioseg train (RUN/best.pt); several: the members of "
                        "one ensemble (the fold models, fold0 first)")
    p.add_argument("--name", required=True, help="released name, e.g. segresnet-brats18")
    p.add_argument("--results", type=Path, required=True, help="JSON of the measured (cross-)validation Dice")
    p.add_argument("--cases", type=Path, nargs="+", required=True,
                   help="cases on which fp16 weights must agree with fp32 (Dice >= 0.999 per region)")
    p.add_argument("--root", type=Path, help="released-model folder (default: the package's glioseg/released)")
    p.add_argument("--replace", action="store_true", help="rebuild a model of that name that exists")
    p.add_argument("--postprocess", type=Path,
                   help="the post-processing predict applies: glioseg experiment postprocess's result file "
                        "(its recommended setting; a choice made with --tta also makes predict flip by default) "
                        "or a JSON mapping of min_tumour_mm3 / min_et_mm3")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    try:
        post = read_postprocess(args.postprocess) if args.postprocess else None
        item = build_release(args.checkpoint, args.name, args.results, args.cases, args.root, args.replace,
                             postprocess=post, tta=bool(args.postprocess) and chose_with_flips(args.postprocess))
    except (ValueError, OSError, GliosegError) as exc:
        logging.error("%s", exc)
        return 2
    print(json.dumps({args.name: item}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
