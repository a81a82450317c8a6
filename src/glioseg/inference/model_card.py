"""A released model's card: what it was trained on and under which terms, how, how well, for what.

The measured results come from a JSON file (``ReleaseResults``, unknown keys are errors)::

    {"method": "5-fold cross-validation on the 20 cases of ../shared/data/brats18 (4 cases per fold)",
     "hardware": "AMD EPYC 9B14 (Zen 4), 2 cores, bf16 native",
     "dice": {"WT": {"mean": 0.87, "sd": 0.05, "median": 0.9, "n": 20,
                     "per_case": {"Brats18_...": 0.91, ...}},
              "TC": {...}, "ET": {...}},
     "held_out_by": {"Brats18_...": "fold0", ...},  # optional: the fold model that scored each case
     "hours": 3.5,                                  # optional: else summed from RUN/metrics.csv
     "commands": ["glioseg train ...", "..."],      # optional: how the figures were measured
     "notes": "markdown, e.g. the recipe study table"}   # optional, printed verbatim

The data-and-terms section follows the training cases' sources (:func:`training_terms`: BraTS
2018, BraTS 2021, by case id); a released ensemble (several members, the fold models of a
cross-validation) lists every member with its training cases, steps, time and precisions.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from glioseg.config import from_dict
from glioseg.data.labels import REGIONS
from glioseg.errors import InputError

# Where a training case comes from, by its id (the releases' own naming), and what its release asks.
SOURCES = {"BraTS 2018": re.compile(r"^Brats18_"), "BraTS 2021": re.compile(r"^BraTS2021_")}
SOURCE_NAMES = {"BraTS 2018": "the BraTS 2018 training set (identical to BraTS 2017 training)",
                "BraTS 2021": "the RSNA-ASNR-MICCAI BraTS 2021 training set"}
CITATIONS = {
    "menze": """- B. H. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
  IEEE TMI 34(10), 2015. doi:10.1109/TMI.2014.2377694""",
    "bakas17": """- S. Bakas et al., "Advancing The Cancer Genome Atlas glioma MRI collections with expert
  segmentation labels and radiomic features", Scientific Data 4, 170117, 2017. doi:10.1038/sdata.2017.117""",
    "bakas18": """- S. Bakas et al., "Identifying the Best Machine Learning Algorithms for Brain Tumor Segmentation,
  Progression Assessment, and Overall Survival Prediction in the BRATS Challenge", arXiv:1811.02629, 2018.""",
    "baid21": """- U. Baid et al., "The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation and
  Radiogenomic Classification", arXiv:2107.02314, 2021."""}
SOURCE_CITATIONS = {"BraTS 2018": ("menze", "bakas17", "bakas18"), "BraTS 2021": ("baid21", "menze", "bakas17")}
SOURCE_TERMS = {
    "BraTS 2018": "The Brats18_2013_* cases come from BRATS 2013 (CC BY-NC-SA 3.0); the Brats18_TCIA* cases "
                  "derive from TCGA-GBM / TCGA-LGG on The Cancer Imaging Archive (CC BY 3.0).",
    "BraTS 2021": "The BraTS2021_* cases are patients new in BraTS 2021 (none is in BraTS 2017-2020), from "
                  "an institution the BraTS 2018 cases do not include; BraTS 2021 data are free for research "
                  "use with the citations above."}


# The text of a model of BraTS 2018 cases only, as every release before BraTS 2021 cases had it.
BRATS_TERMS = ("The training images are BraTS data (BraTS 2018 training set, identical to BraTS 2017 training):\n"
               "free for research use with citation of\n\n"
               + "\n".join(CITATIONS[c] for c in SOURCE_CITATIONS["BraTS 2018"]) + "\n\n"
               "The Brats18_2013_* cases come from BRATS 2013 (CC BY-NC-SA 3.0); the Brats18_TCIA* cases derive\n"
               "from TCGA-GBM / TCGA-LGG on The Cancer Imaging Archive (CC BY 3.0). Use of these weights\n"
               "inherits those terms: research use, with the citations above; the BRATS 2013 share is\n"
               "non-commercial.")


def case_source(case_id: str) -> str | None:
    """The release a training case comes from (a key of :data:`SOURCES`), None if glioseg cannot tell."""
    return next((source for source, pattern in SOURCES.items() if pattern.match(case_id)), None)


def sources_of(cases: Sequence[str]) -> dict[str, list[str]]:
    """source (None: unknown) → its cases, in :data:`SOURCES` order."""
    groups: dict = {}
    for case in sorted(cases):
        groups.setdefault(case_source(case), []).append(case)
    return {k: groups[k] for k in [*SOURCES, None] if k in groups}


def _unknown_line(cases: Sequence[str]) -> str:
    return (f"{len(cases)} training case(s) come from no source glioseg recognises by name "
            f"({', '.join(cases[:5])}{', ...' if len(cases) > 5 else ''}): their terms are not stated here.")


def training_terms(cases: Sequence[str] | None) -> str:
    """The card's data-and-terms text for these training cases: the BraTS 2018 text for a model
    of BraTS 2018 cases only (as every glioseg release before BraTS 2021 cases had), else the
    releases the cases come from, their citations and terms."""
    if cases is None:
        return ("The checkpoint does not record its training cases, so their source and terms cannot be "
                "stated here: the results' notes must say them.")
    groups = sources_of(cases)
    if list(groups) == ["BraTS 2018"]:
        return BRATS_TERMS
    known = [s for s in groups if s is not None]
    if not known:
        return _unknown_line(groups[None])
    shares = " and ".join(f"{len(groups[s])} of {SOURCE_NAMES[s]}" for s in known)
    cites = list(dict.fromkeys(c for s in known for c in SOURCE_CITATIONS[s]))
    lines = [f"The training images are {sum(len(groups[s]) for s in known)} BraTS cases, {shares}: free for "
             "research use with citation of", "", *(CITATIONS[c] for c in cites), "",
             " ".join(SOURCE_TERMS[s] for s in known) + " Use of these weights inherits those terms: research "
             "use, with the citations above" + ("; the BRATS 2013 share is non-commercial." if "BraTS 2018" in known
                                                else ".")]
    if None in groups:
        lines += ["", _unknown_line(groups[None])]
    return "\n".join(lines)


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
- Its training data are cases of {data}: scores on the
  cases it was trained on are not a measure of generalisation; the measured Dice below says which
  cases were held out."""
DATA_OF = {"BraTS 2018": "BraTS 2017/2018 (and so of MSD Task01) training",
           "BraTS 2021": "BraTS 2021 training"}


def intended_use(cases: Sequence[str] | None) -> str:
    """:data:`INTENDED_USE` with the releases its training cases come from."""
    known = [s for s in sources_of(cases or ()) if s is not None]
    data = " and ".join(DATA_OF[s] for s in known) if known else "the training set listed under Recipe"
    return INTENDED_USE.format(data=data)


@dataclass(frozen=True)
class RegionScore:
    mean: float
    sd: float | None = None
    n: int | None = None
    per_case: dict = field(default_factory=dict)
    median: float | None = None

    def median_value(self) -> float | None:
        """The median as given, else that of the per-case values (results written before it was)."""
        if self.median is not None or not self.per_case:
            return self.median
        return float(statistics.median(self.per_case.values()))


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
    held_out_by: dict = field(default_factory=dict)
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
    """``{region: {mean, sd, median, n}}`` for the index (the per-case values stay in the card)."""
    out = {}
    for region in REGIONS:
        score = getattr(results.dice, region)
        out[region] = {"mean": score.mean, "sd": score.sd, "median": score.median_value(), "n": score.n}
    return out


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _dice_table(results: ReleaseResults) -> list[str]:
    lines = ["| region | mean | sd | median | n |", "|---|---|---|---|---|"]
    for region in REGIONS:
        score = getattr(results.dice, region)
        lines.append(f"| {region} | {score.mean:.3f} | {_cell(score.sd)} | {_cell(score.median_value())} | "
                     f"{score.n if score.n is not None else ''} |")
    cases = sorted({c for r in REGIONS for c in getattr(results.dice, r).per_case})
    if cases:
        fold = bool(results.held_out_by)
        lines += ["", "| case |" + (" held out by |" if fold else "") + " WT | TC | ET |",
                  "|---|" + ("---|" if fold else "") + "---|---|---|"]
        for case in cases:
            cells = [_cell(getattr(results.dice, r).per_case.get(case)) for r in REGIONS]
            held = f" {results.held_out_by.get(case, '')} |" if fold else ""
            lines.append(f"| {case} |{held} " + " | ".join(cells) + " |")
    return lines


def _duration(hours: float | None) -> str:
    if hours is None:
        return "not recorded"
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


RECIPE_KEYS = ("model", "model_options", "loss", "optimizer", "lr", "weight_decay", "warmup_steps", "epochs",
               "steps_per_epoch", "batch_size", "patch", "foreground_fraction", "precision", "seed")


def _config_lines(members: Sequence[dict]) -> list[str]:
    """The recipe's settings: once where the members agree, per member where they differ."""
    lines = []
    for key in RECIPE_KEYS:
        values = [m["config"][key] for m in members if key in m["config"]]
        if not values:
            continue
        if all(v == values[0] for v in values):
            lines.append(f"- `{key}`: `{json.dumps(values[0])}`")
        else:
            lines.append(f"- `{key}`: " + ", ".join(f"{m['label']} `{json.dumps(m['config'].get(key))}`"
                                                    for m in members))
    return lines


def _trained_on(cases: Sequence[str] | None) -> str:
    return "training cases not recorded" if cases is None else f"trained on {len(cases)} cases: {', '.join(cases)}"


def _member_lines(members: Sequence[dict]) -> list[str]:
    """One model: its steps, time, precisions, cases. An ensemble: a table of the members, then each one's cases."""
    if len(members) == 1:
        m = members[0]
        lines = [f"- optimiser steps of these weights: {m['steps']}; training time of the run: " + _duration(m["hours"])]
        if m.get("precision_steps"):
            lines.append(f"- steps per precision over the run: {json.dumps(m['precision_steps'])}")
        if m.get("cases") is not None:
            lines.append(f"- {_trained_on(m['cases'])}")
        return lines
    lines = [f"- an ensemble of {len(members)} members, whose probabilities `glioseg predict --model` averages:",
             "", "| member | file | optimiser steps | training time | steps per precision | training cases |",
             "|---|---|---|---|---|---|"]
    for m in members:
        precision = json.dumps(m["precision_steps"]) if m.get("precision_steps") else "not recorded"
        count = "not recorded" if m.get("cases") is None else len(m["cases"])
        lines.append(f"| {m['label']} | `{m['file']}` | {m['steps']} | {_duration(m['hours'])} | {precision} | {count} |")
    lines.append("")
    hours = [m["hours"] for m in members]
    if None not in hours:
        lines.append(f"- training time of all members: {_duration(sum(hours))}")
    lines += [f"- {m['label']} {_trained_on(m.get('cases'))}" for m in members]
    return lines


def _recipe_lines(members: Sequence[dict]) -> list[str]:
    lines = [*_config_lines(members), *_member_lines(members)]
    lines.append(f"- hardware: {members[0]['hardware']}")
    lines.append(f"- software: {json.dumps(members[0].get('versions', {}))}")
    return lines


def union_cases(members: Sequence[dict]) -> list[str] | None:
    """Every case any member trained on (None when a member does not record its own)."""
    if any(m.get("cases") is None for m in members):
        return None
    return sorted({c for m in members for c in m["cases"]})


def _ensemble_method(members: Sequence[dict], results: ReleaseResults) -> list[str]:
    if len(members) == 1:
        return []
    return [f"These are the held-out Dice of the fold models that make up this release: each case "
            f"was scored by the member that did not train on it"
            + (" (column \"held out by\")" if results.held_out_by else "")
            + f". The {len(members)}-member average that `--model` runs is not scored here: every case "
            "is a training case of the other members, so no case is held out from the ensemble.", ""]


def render_card(name: str, bundle, members: Sequence[dict], results: ReleaseResults, agreement: dict) -> str:
    """The MODEL_CARD.md text. ``members``: per member (one for a single model) its ``label``,
    ``file``, and the training facts: config, steps, hours, hardware, precision_steps, versions,
    cases (trained on; None if unrecorded);
    ``agreement``: dtype chosen, threshold, cases and the per-region minimum fp16-vs-fp32 Dice."""
    cases = union_cases(members)
    lines = [f"# {name}", "",
             f"{bundle.model} ({json.dumps(dict(bundle.options))}), {bundle.target} output "
             f"({bundle.output.describe()}), "
             f"inputs {', '.join(bundle.channels)}, trained with glioseg"
             + (f"; an ensemble of {len(members)} models ({', '.join(m['label'] for m in members)})"
                if len(members) > 1 else "") + ".", "",
             "## Intended use and expected inputs", "", intended_use(cases), "",
             "## Training data and terms", "", training_terms(cases), "",
             "## Recipe", "", *_recipe_lines(members), "",
             "## Measured Dice", "", f"Method: {results.method}", "", *_ensemble_method(members, results),
             *_dice_table(results), ""]
    post = bundle.postprocess_config
    if bundle.tta:
        lines += ["## Flips (test-time augmentation)", "",
                  "`glioseg predict` averages each member's probabilities over the 8 axis flips by default "
                  "(8x the network's time; `--no-tta`: one pass). The post-processing below was chosen on "
                  "flipped held-out probabilities (`glioseg experiment postprocess --tta`); the Dice above "
                  "are of the fold models' labels without flips.", ""]
    if post.active:
        lines += ["## Post-processing", "",
                  f"`glioseg predict` applies, after the network: {post.describe()}. It was chosen on the "
                  "cross-validation's held-out predictions (`glioseg experiment postprocess`); the Dice above "
                  "are of the fold models' labels without it. `--postprocess none` writes the network's "
                  "labels as they are.", ""]
    if results.commands:
        lines += ["Commands:", "", "```", *results.commands, "```", ""]
    if results.notes:
        lines += [results.notes.rstrip(), ""]
    minima = ", ".join(f"{r} {v:.4f}" for r, v in agreement["min_dice"].items())
    agree = ("the fp16-rounded ensemble's labels (all members rounded) agree with the fp32 ensemble's"
             if len(members) > 1 else "the fp16-rounded weights' labels agree with fp32's")
    lines += ["## Stored weights", "",
              f"{agreement['dtype']} safetensors. With glioseg predict's default windows, {agree} "
              f"at per-region Dice (minimum over {len(agreement['cases'])} case(s): "
              f"{', '.join(agreement['cases'])}) {minima}; fp16 is stored only at ≥ {agreement['threshold']} "
              "in every region. The weights are loaded as fp32; prediction computes in the precision "
              "`--precision` picks (auto: bf16 where it is native and faster).", ""]
    return "\n".join(lines)
