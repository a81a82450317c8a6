"""Prediction in fp32 and in bf16 (or fp16) with the same checkpoint: label agreement and time per case.

For each case, the same preprocessed image goes through ``glioseg predict``'s window engine once per
precision (interleaved case by case, so machine load hits both alike); the labels (WT / TC / ET, as
predict writes them) are compared with Dice, and each is scored against the case's expert label.
Also what ``--precision auto`` would choose here, with its reason. On a CPU without native
bf16 the bf16 column is emulated and slow: the figures then say what bf16 costs there, not what it
gains.

Example (a trained checkpoint, five real cases)::

    PYTHONPATH=src python benchmarks/precision_agreement.py --checkpoint runs/x/best.pt \\
        --cases ../shared/data/brats18/Brats18_CBICA_ABM_1 ../shared/data/brats18/Brats18_TCIA13_623_1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

REGIONS = ("WT", "TC", "ET")


def expert_label(item):
    """The case's expert label, read through its dataset (prediction inputs carry none)."""
    from glioseg.data.cases import load_case
    from glioseg.data.formats import discover

    folder = Path(item.case.images[item.dataset.channels[0]]).parent
    dataset = discover(folder.parent)
    case = next((c for c in dataset.cases if c.case_id == item.case.case_id), None)
    return load_case(case, dataset)[1] if case is not None else None


def case_regions(predictor, item) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(3, x, y, z) predicted regions in cache space, the expert's regions, and seconds."""
    from glioseg.data.cases import load_case
    from glioseg.data.labels import labels_to_regions
    from glioseg.data.preprocess import preprocess_case

    image, _ = load_case(item.case, item.dataset)
    label = expert_label(item)
    array, lab, meta = preprocess_case(image, label, item.case, predictor.bundle.preprocess_config(),
                                       channels=item.dataset.channels)
    start = time.perf_counter()
    probs, _ = predictor.case_probabilities(array, meta, item.case.site)
    seconds = time.perf_counter() - start
    regions = predictor.bundle.output.to_regions(probs)
    expert = labels_to_regions(lab, item.scheme) if lab is not None else None
    return regions, expert, seconds


def compare(checkpoint: Path, cases: list[Path], low: str) -> tuple[list[dict], str]:
    from glioseg.evaluation.metrics import dice
    from glioseg.inference import inputs
    from glioseg.inference.pipeline import make_predictor
    from glioseg.inference.predictor import PredictConfig

    predictors = {p: make_predictor([checkpoint], PredictConfig(precision=p)) for p in ("fp32", low)}
    auto = make_predictor([checkpoint], PredictConfig(precision="auto")).precision_choice.reason
    bundle = predictors["fp32"].bundle
    rows = []
    for item in inputs.collect(cases, {}, None, bundle.channels, None, bundle.scheme):
        got = {p: case_regions(pred, item) for p, pred in predictors.items()}
        row = {"case": item.case.case_id}
        for i, region in enumerate(REGIONS):
            row[f"agree_{region}"] = dice(got["fp32"][0][i], got[low][0][i])
            expert = got["fp32"][1]
            for p in predictors:
                row[f"{p}_{region}"] = dice(got[p][0][i], expert[i]) if expert is not None else None
        row.update({f"{p}_s": got[p][2] for p in predictors})
        rows.append(row)
    return rows, auto


def print_table(rows: list[dict], low: str, checkpoint: Path, auto: str) -> None:
    from glioseg.precisions import describe_device

    print(f"\nfp32 vs {low} prediction, {checkpoint}; {describe_device('cpu')}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"--precision auto here: {auto}")
    head = " | ".join(["case", *(f"{r} agree" for r in REGIONS), "fp32 vs expert", f"{low} vs expert",
                       "fp32 s", f"{low} s"])
    print(f"| {head} |\n|{'---|' * 8}")
    for r in rows:
        vs = lambda p: " / ".join("-" if r[f"{p}_{g}"] is None else f"{r[f'{p}_{g}']:.3f}" for g in REGIONS)  # noqa: E731
        print(f"| {r['case']} | " + " | ".join(f"{r[f'agree_{g}']:.4f}" for g in REGIONS) +
              f" | {vs('fp32')} | {vs(low)} | {r['fp32_s']:.1f} | {r[f'{low}_s']:.1f} |")
    worst = {g: min(r[f"agree_{g}"] for r in rows) for g in REGIONS}
    print("lowest agreement per region: " + ", ".join(f"{g} {v:.4f}" for g, v in worst.items()))
    print(f"median seconds per case: fp32 {statistics.median(r['fp32_s'] for r in rows):.1f}, "
          f"{low} {statistics.median(r[f'{low}_s'] for r in rows):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--cases", type=Path, nargs="+", required=True, help="case folders with expert labels")
    parser.add_argument("--low", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows, auto = compare(args.checkpoint, args.cases, args.low)
    print_table(rows, args.low, args.checkpoint, auto)
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "auto": auto, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
