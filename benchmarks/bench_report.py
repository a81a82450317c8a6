"""Size and time of the HTML report with and without the 3D viewer, on real BraTS cases.

Predictions are the expert labels shifted by 2 voxels along x (a stand-in for a model's: the
report's size and time hardly depend on what the labels say); the first ``--cases`` cases of
``--data`` are evaluated and reported (``write_report`` as ``glioseg evaluate`` calls it). Prints
one row per variant: file size, wall and CPU seconds (process time of this single-threaded
process), per case, and the viewer's share of the file.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_report.py --data ../shared/data/brats18 --cases 10
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from glioseg.data.formats import discover
from glioseg.evaluation.evaluate import evaluate
from glioseg.evaluation.report import cases_from_dataset, write_report
from glioseg.evaluation.viewer_page import niivue_script


def _predictions(dataset, cases: int, pred: Path) -> None:
    pred.mkdir(parents=True, exist_ok=True)
    for case in dataset.cases[:cases]:
        ref = nib.load(str(case.label))
        shifted = np.roll(np.asarray(ref.dataobj).astype(np.uint8), 2, axis=0)
        nib.save(nib.Nifti1Image(shifted, ref.affine, ref.header), str(pred / f"{case.case_id}.nii.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/brats18"))
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="folder to keep the reports in (default: a temporary one)")
    args = parser.parse_args()
    dataset = discover(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        _predictions(dataset, args.cases, folder / "pred")
        result = evaluate(folder / "pred", args.data, folder / "eval", missing="skip")
        cases = cases_from_dataset(dataset, folder / "pred")
        print(f"{len(cases)} cases of {args.data}\n")
        print(f"{'variant':<10}{'MB':>8}{'MB/case':>9}{'wall s':>8}{'wall s/case':>12}{'CPU s/case':>11}"
              f"{'viewer data MB/case':>21}")
        for variant, with_viewer in (("viewer", True), ("static", False)):
            wall, cpu = time.perf_counter(), time.process_time()
            out = write_report(folder / f"report_{variant}.html", cases=cases, metrics=result.rows,
                               summary=result.summary, max_cases=len(cases), with_viewer=with_viewer)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            text = out.read_text()
            data = sum(len(m) for m in re.findall(r'<script type="application/json" id="gv-case-\d+">.*?</script>',
                                                  text, flags=re.S))
            size = out.stat().st_size / 1e6
            script = len(niivue_script()) / 1e6 if with_viewer else 0.0
            print(f"{variant:<10}{size:>8.1f}{(size - script) / len(cases):>9.2f}{wall:>8.1f}"
                  f"{wall / len(cases):>12.2f}{cpu / len(cases):>11.2f}{data / 1e6 / len(cases):>21.2f}")
        print(f"\nNiiVue script: {len(niivue_script()) / 1e6:.2f} MB once per report (in 'viewer')")


if __name__ == "__main__":
    main()
