"""How far glioseg's brain-box window is from the recipe's whole-volume window, per checkpoint and case.

    PYTHONPATH=src python benchmarks/window_agreement.py --checkpoint A.pt [B.pt ...] \
        --cases ../shared/data/brats18/Brats18_CBICA_ABM_1 [...] [--threads 2]

Case reading and the WT / TC / ET masks are bench_inference.py's (imported from this folder).

For every checkpoint and case: the labels of ``glioseg predict --roi box`` (the default) and of
``--roi volume`` (the recipe's one window over the whole volume: the recipe's labels, as
``bench_inference.py`` measures), their Dice agreement per region, and each one's Dice against the
expert label. Networks that normalise over their window (GroupNorm, attention) give different
logits for the two windows; how many labels that flips depends on the weights, which is what this
prints: one row per checkpoint (e.g. checkpoints of one run at increasing training steps).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from bench_inference import read_case, reference_masks, region_masks
from glioseg.data import preprocess
from glioseg.data.labels import REGIONS, get_scheme, regions_to_labels
from glioseg.evaluation.metrics import dice
from glioseg.inference.predictor import PredictConfig, Predictor, open_network


def case_regions(predictor: Predictor, case_dir: Path) -> tuple[dict, float]:
    """(WT / TC / ET masks in the file's grid, inference seconds) of one case."""
    bundle = predictor.bundle
    item, _, array, meta = read_case(case_dir, bundle)
    start = time.perf_counter()
    probs, _ = predictor.case_probabilities(array, meta, item.case.site)
    seconds = time.perf_counter() - start
    regions = bundle.output.to_regions(probs)
    labels = preprocess.to_original(regions_to_labels(regions, get_scheme("brats")), meta, order=0)
    return region_masks(labels), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"{'checkpoint':<36} {'case':<24} {'box s':>6} {'vol s':>6}  box vs volume WT / TC / ET"
          "   box vs expert        volume vs expert")
    for path in args.checkpoint:
        network = open_network(path)
        runs = {w: Predictor([network], PredictConfig(window=w)) for w in ("box", "volume")}
        for case_dir in args.cases:
            (box, t_box), (vol, t_vol) = (case_regions(runs[w], case_dir) for w in ("box", "volume"))
            expert = reference_masks(case_dir)
            agree = " / ".join(f"{dice(box[r], vol[r]):.3f}" for r in REGIONS)
            vs = ["   n/a" if expert is None else " / ".join(f"{dice(p[r], expert[r]):.3f}" for r in REGIONS)
                  for p in (box, vol)]
            print(f"{str(path)[-36:]:<36} {case_dir.name[-24:]:<24} {t_box:>6.1f} {t_vol:>6.1f}  {agree}"
                  f"   {vs[0]}   {vs[1]}", flush=True)
    print(f"regions: {', '.join(REGIONS)}; Dice of two empty masks is 1")


if __name__ == "__main__":
    main()
