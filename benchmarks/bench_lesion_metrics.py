"""Lesion-wise BraTS metrics: glioseg against the official implementations, time and equality per case.

For each real case (../shared/data brats18 + brats21 by default) and each generation, the same label
maps in memory go through glioseg (``lesionwise.score_lesions`` / ``panoptic.score_panoptic``) and
through the reference: the frozen oracles of the 2023 and 2024 scripts (tests/evaluation/oracles;
they skip the scripts' NIfTI round trips, so the reference times here are lower bounds) and
panoptica with brats-evaluation's glioma config for 2025. Prints one row per case and generation
(CPU seconds of this process, which a loaded machine does not inflate as it does wall time, and wall
seconds; the speed-up in CPU time; the largest difference of any case score) and a summary per
generation. Run it with OMP_NUM_THREADS=1: every step is single-threaded, so CPU time is the time
the work takes on one free core.

Predictions: the expert label perturbed deterministically (tests/evaluation/_lesion_cases.py's
``perturbed_label``), or ``--pred DIR`` of ``<case>.nii.gz`` (e.g. ``glioseg predict`` output);
``--write-predictions DIR`` saves the perturbed labels so that ``glioseg evaluate`` can score them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lesion_metrics.py [--cases N] [--generations ...]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glioseg.data.labels import get_scheme  # noqa: E402
from glioseg.evaluation.lesionwise import GENERATIONS, brats2023_labels, score_lesions  # noqa: E402
from glioseg.evaluation.panoptic import HD95_PENALTY, score_panoptic  # noqa: E402
from tests.evaluation._lesion_cases import perturbed_label  # noqa: E402
from tests.evaluation.oracles import brats2023, brats2024  # noqa: E402

BRATS = get_scheme("brats")
ALL = ("lesion-2023", "lesion-2024", "lesion-2025")


def real_cases(data: Path, datasets: list[str], limit: int | None, stride: int) -> list[Path]:
    folders = [p for name in datasets for p in sorted((data / name).iterdir()) if p.is_dir()][::stride]
    return folders[:limit] if limit else folders


def load(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj).astype(np.uint8), tuple(float(z) for z in image.header.get_zooms()), image.affine


def _panoptica():
    import brats_evaluation
    from panoptica import Panoptica_Evaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(brats_evaluation.config_path("gli")))


def ours(name, pred, ref, spacing) -> dict:
    scores = score_panoptic(pred, ref, BRATS, spacing) if name == "lesion-2025" else \
        score_lesions(pred, ref, BRATS, spacing, GENERATIONS[name])
    return {s.region: (s.dice, s.hd95, s.tp, s.fp, s.fn) for s in scores}


def reference(name, pred, ref, spacing, evaluator) -> dict:
    pred23, ref23 = brats2023_labels(pred, BRATS), brats2023_labels(ref, BRATS)
    if name == "lesion-2025":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = evaluator.evaluate(np.asfortranarray(pred23), np.asfortranarray(ref23), voxelspacing=spacing)
        out = {}
        for region, result in results.items():
            d = result.to_dict()
            hd95 = HD95_PENALTY if math.isinf(d["sq_hd95"]) else d["sq_hd95"]
            out[region.upper()] = (d["sq_dsc"], hd95, d["tp"], d["fp"], d["fn"])
        return out
    oracle = brats2023.evaluate if name == "lesion-2023" else brats2024.evaluate
    return {region: (s["dice"], s["hd95"], s["tp"], s["fp"], s["fn"])
            for region, s in oracle(pred23, ref23, spacing).items()}


def difference(a: dict, b: dict) -> float:
    """Largest |difference| of Dice / HD95 over regions; inf when counts or regions differ."""
    if set(a) != set(b):
        return math.inf
    worst = 0.0
    for region in a:
        if a[region][2:] != tuple(b[region][2:]):
            return math.inf
        for x, y in zip(a[region][:2], b[region][:2]):
            if not (math.isnan(x) and math.isnan(y)):
                worst = max(worst, abs(float(x) - float(y)))
    return worst


def timed(fn, *args):
    """The result, CPU seconds of this process, wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pred", type=Path, help="folder of <case>.nii.gz predictions (default: perturbed labels)")
    parser.add_argument("--datasets", nargs="+", default=["brats18", "brats21"], help="folders under --data")
    parser.add_argument("--cases", type=int, help="only the first N cases")
    parser.add_argument("--stride", type=int, default=1, help="every K-th case only")
    parser.add_argument("--generations", nargs="+", choices=ALL, default=list(ALL))
    parser.add_argument("--write-predictions", type=Path, help="save the perturbed labels here and stop")
    args = parser.parse_args()
    cases = real_cases(args.data, args.datasets, args.cases, args.stride)
    if args.write_predictions:
        args.write_predictions.mkdir(parents=True, exist_ok=True)
        for folder in cases:
            ref, _, affine = load(folder / f"{folder.name}_seg.nii.gz")
            pred = perturbed_label(ref, BRATS.regions, BRATS.enhancing, BRATS.edema)
            nib.save(nib.Nifti1Image(pred, affine), str(args.write_predictions / f"{folder.name}.nii.gz"))
        print(f"wrote {len(cases)} perturbed labels to {args.write_predictions}")
        return 0
    evaluator = _panoptica() if "lesion-2025" in args.generations else None
    print(f"{'case':<24}{'metrics':<13}{'glioseg CPU s':>14}{'reference CPU s':>16}{'speed-up':>10}"
          f"{'wall s (glioseg / ref)':>24}{'max |diff|':>12}")
    totals = {name: [0.0, 0.0, 0.0, 0, 0.0, 0.0] for name in args.generations}
    for folder in cases:
        ref, spacing, _ = load(folder / f"{folder.name}_seg.nii.gz")
        pred = load(args.pred / f"{folder.name}.nii.gz")[0] if args.pred else \
            perturbed_label(ref, BRATS.regions, BRATS.enhancing, BRATS.edema)
        for name in args.generations:
            mine, t_ours, w_ours = timed(ours, name, pred, ref, spacing)
            theirs, t_ref, w_ref = timed(reference, name, pred, ref, spacing, evaluator)
            diff = difference(mine, theirs)
            total = totals[name]
            total[0] += t_ours
            total[1] += t_ref
            total[2] = max(total[2], diff)
            total[3] += 1
            total[4] += w_ours
            total[5] += w_ref
            wall = f"{w_ours:.2f} / {w_ref:.2f}"
            print(f"{folder.name:<24}{name:<13}{t_ours:>14.2f}{t_ref:>16.2f}{t_ref / t_ours:>9.1f}x{wall:>24}"
                  f"{diff:>12.2g}", flush=True)
    print(f"\n{'metrics':<13}{'cases':>6}{'glioseg CPU s/case':>20}{'reference CPU s/case':>22}{'speed-up':>10}"
          f"{'wall s/case (glioseg / ref)':>29}{'max |diff|':>12}")
    for name, (t_ours, t_ref, diff, n, w_ours, w_ref) in totals.items():
        wall = f"{w_ours / n:.2f} / {w_ref / n:.2f}"
        print(f"{name:<13}{n:>6}{t_ours / n:>20.2f}{t_ref / n:>22.2f}{t_ref / t_ours:>9.1f}x{wall:>29}{diff:>12.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
