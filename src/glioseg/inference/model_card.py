"""A released model's card: what it was trained on and under which terms, how, how well, for what.

The measured results come from a JSON file (``ReleaseResults``, unknown keys are errors)::

    {"method": "5-fold cross-validation on the 20 cases of ../shared/data/brats18 (4 cases per fold)",
     "hardware": "AMD EPYC 9B14 (Zen 4), 2 cores, bf16 native",
     "dice": {"WT": {"mean": 0.87, "sd": 0.05, "n": 20, "per_case": {"Brats18_...": 0.91, ...}},
              "TC": {...}, "ET": {...}},
     "hours": 3.5,                                  # optional: else summed from RUN/metrics.csv
     "commands": ["glioseg train ...", "..."],      # optional: how the figures were measured
     "notes": "markdown, e.g. the recipe study table"}   # optional, printed verbatim
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from glioseg.config import from_dict, to_dict
from glioseg.data.labels import REGIONS
from glioseg.errors import InputError

BRATS_TERMS = """\
The training images are BraTS data (BraTS 2018 training set, identical to BraTS 2017 training):
free for research use with citation of

- B. H. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
  IEEE TMI 34(10), 2015. doi:10.1109/TMI.2014.2377694
- S. Bakas et al., "Advancing The Cancer Genome Atlas glioma MRI collections with expert
  segmentation labels and radiomic features", Scientific Data 4, 170117, 2017. doi:10.1038/sdata.2017.117
- S. Bakas et al., "Identifying the Best Machine Learning Algorithms for Brain Tumor Segmentation,
  Progression Assessment, and Overall Survival Prediction in the BRATS Challenge", arXiv:1811.02629, 2018.

The Brats18_2013_* cases come from BRATS 2013 (CC BY-NC-SA 3.0); the Brats18_TCIA* cases derive
from TCGA-GBM / TCGA-LGG on The Cancer Imaging Archive (CC BY 3.0). Use of these weights
inherits those terms: research use, with the citations above; the BRATS 2013 share is
non-commercial."""

INTENDED_USE = """\
- Input: one case as four named modalities, FLAIR, T1, T1ce (post-contrast T1) and T2, each
  BraTS-preprocessed: skull-stripped, co-registered to each other (SRI24 atlas space), resampled to
  1 mm isotropic, as the BraTS 2017-2021 releases are. glioseg reads the channels by name and
  applies the recorded preprocessing (RAS, brain box, z-score) itself; raw scanner DICOM or
  images with skull are out of scope and give meaningless output.
- Output: a label map in the input's convention (BraTS 0/1/2/4) and geometry; regions WT
  (whole tumour), TC (tumour core), ET (enhancing tumour).
- **Not for clinical decisions.** A research model trained on a few public cases, validated only
  as described above; not a medical device, not validated on any other population, scanner or
  protocol.
- Its training data are cases of BraTS 2017/2018 (and so of MSD Task01) training: scores on the
  cases it was trained on are not a measure of generalisation; the measured Dice below says which
  cases were held out."""


@dataclass(frozen=True)
class RegionScore:
    mean: float
    sd: float | None = None
    n: int | None = None
    per_case: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DiceResults:
    WT: RegionScore
    TC: RegionScore
    ET: RegionScore


@dataclass(frozen=True)
class ReleaseResults:
    """The measured validation / cross-validation results a card reports (module docstring)."""

    method: str
    hardware: str
    dice: DiceResults
    hours: float | None = None
    commands: tuple[str, ...] = ()
    notes: str = ""


def read_results(path: Path | str) -> ReleaseResults:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the results file: {exc}") from None
    return from_dict(ReleaseResults, data, where=str(path))


def dice_summary(results: ReleaseResults) -> dict:
    """``{region: {mean, sd, n}}`` for the index (the per-case values stay in the card)."""
    return {r: {k: v for k, v in to_dict(getattr(results.dice, r)).items() if k != "per_case"}
            for r in REGIONS}


def _dice_table(results: ReleaseResults) -> list[str]:
    lines = ["| region | mean | sd | n |", "|---|---|---|---|"]
    for region, score in to_dict(results.dice).items():
        sd = "" if score["sd"] is None else f"{score['sd']:.3f}"
        lines.append(f"| {region} | {score['mean']:.3f} | {sd} | {score['n'] if score['n'] is not None else ''} |")
    cases = sorted({c for s in to_dict(results.dice).values() for c in s["per_case"]})
    if cases:
        lines += ["", "| case | WT | TC | ET |", "|---|---|---|---|"]
        for case in cases:
            cells = [getattr(results.dice, r).per_case.get(case) for r in REGIONS]
            lines.append(f"| {case} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


def _duration(hours: float | None) -> str:
    if hours is None:
        return "not recorded"
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _recipe_lines(training: dict) -> list[str]:
    config = training["config"]
    keys = ("model", "model_options", "loss", "optimizer", "lr", "weight_decay", "warmup_steps", "epochs",
            "steps_per_epoch", "batch_size", "patch", "foreground_fraction", "precision", "seed")
    lines = [f"- `{k}`: `{json.dumps(config[k])}`" for k in keys if k in config]
    lines.append(f"- optimiser steps of these weights: {training['steps']}; training time of the run: "
                 + _duration(training["hours"]))
    if training.get("precision_steps"):
        lines.append(f"- steps per precision over the run: {json.dumps(training['precision_steps'])}")
    if training.get("cases") is not None:
        lines.append(f"- trained on {len(training['cases'])} cases: {', '.join(training['cases'])}")
    lines.append(f"- hardware: {training['hardware']}")
    lines.append(f"- software: {json.dumps(training.get('versions', {}))}")
    return lines


def render_card(name: str, bundle, training: dict, results: ReleaseResults, agreement: dict) -> str:
    """The MODEL_CARD.md text. ``training``: config, steps, hours, hardware, precision_steps, versions,
    cases (trained on; None if unrecorded);
    ``agreement``: dtype chosen, threshold, cases and the per-region minimum fp16-vs-fp32 Dice."""
    lines = [f"# {name}", "",
             f"{bundle.model} ({json.dumps(dict(bundle.options))}), {bundle.target} output "
             f"({bundle.output.describe()}), "
             f"inputs {', '.join(bundle.channels)}, trained with glioseg.", "",
             "## Intended use and expected inputs", "", INTENDED_USE, "",
             "## Training data and terms", "", BRATS_TERMS, "",
             "## Recipe", "", *_recipe_lines(training), "",
             "## Measured Dice", "", f"Method: {results.method}", "", *_dice_table(results), ""]
    if results.commands:
        lines += ["Commands:", "", "```", *results.commands, "```", ""]
    if results.notes:
        lines += [results.notes.rstrip(), ""]
    minima = ", ".join(f"{r} {v:.4f}" for r, v in agreement["min_dice"].items())
    lines += ["## Stored weights", "",
              f"{agreement['dtype']} safetensors. With glioseg predict's default windows, the fp16-rounded "
              f"weights' labels agree with fp32's at per-region Dice (minimum over {len(agreement['cases'])} case(s): "
              f"{', '.join(agreement['cases'])}) {minima}; fp16 is stored only at ≥ {agreement['threshold']} "
              "in every region. The weights are loaded as fp32; prediction computes in the precision "
              "`--precision` picks (auto: bf16 where it is native and faster).", ""]
    return "\n".join(lines)
