"""``glioseg report``: one self-contained HTML file, its PNG figures embedded as base64 data URIs.

Sections, each present when its input is given: the evaluation summary and per-case metrics and
volume tables (``metrics.csv`` / ``summary.json`` from ``glioseg evaluate``), a training run's
curves and precision timeline, and per case the prediction and/or reference overlaid on FLAIR and
T1ce in three planes through the tumour (at most ``max_cases`` cases, so a large dataset does not
make a huge file), with an interactive 3D viewer of the same cases (:mod:`viewer`, :mod:`viewer_page`).
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import glioseg
from glioseg.data.cases import read_label
from glioseg.data.formats import Case
from glioseg.data.io import DataError, Image, read_image
from glioseg.data.labels import REGIONS, LabelScheme, region_volumes_ml
from glioseg.errors import InputError
from glioseg.evaluation import figures, viewer, viewer_page
from glioseg.evaluation.evaluate import COLUMNS, METRICS_FILE, SUMMARY_FILE, check_geometry, prediction_path
from glioseg.evaluation.metrics import METRIC_COLUMNS
from glioseg.run_io import CURVE_COLUMNS, RunFiles
from glioseg.files import read_json, write_text_atomic

log = logging.getLogger(__name__)

UNDERLAYS: tuple[tuple[str, str], ...] = (("FLAIR", "flair"), ("T1ce", "t1ce"))
#: The viewer's modalities (display name, channel); the figures draw the UNDERLAYS among them.
MODALITIES: tuple[tuple[str, str], ...] = (("FLAIR", "flair"), ("T1", "t1"), ("T1ce", "t1ce"), ("T2", "t2"))
DEFAULT_MAX_CASES = 20
CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1360px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}.low{background:#fbd9d9}.note{font-size:12px;color:#555}
img{max-width:100%;border:1px solid #ddd}
"""


@dataclass(frozen=True)
class ReportCase:
    """One case to draw: its image files (display name of :data:`MODALITIES` → path) and label files."""

    case_id: str
    scheme: LabelScheme
    images: dict[str, Path]
    volume_index: dict[str, int] | None = None
    reference: Path | None = None
    prediction: Path | None = None


def report_case(case: Case, scheme: LabelScheme, pred_dir: Path | None = None) -> ReportCase | None:
    """A case to draw; with ``pred_dir``, its prediction there (None when it has none)."""
    pred = prediction_path(Path(pred_dir), case.case_id) if pred_dir is not None else None
    if pred_dir is not None and pred is None:
        return None
    names = [(name, ch) for name, ch in MODALITIES if ch in case.images]
    index = {name: case.volume_index[ch] for name, ch in names} if case.volume_index else None
    return ReportCase(case.case_id, scheme, {name: case.images[ch] for name, ch in names}, index, case.label, pred)


def cases_from_dataset(dataset, pred_dir: Path | None = None) -> list[ReportCase]:
    """Report cases of a discovered dataset; with ``pred_dir``, the cases that have a prediction."""
    cases = (report_case(case, dataset.scheme, pred_dir) for case in dataset.cases)
    return [case for case in cases if case is not None]


def _read_underlay(case: ReportCase, name: str) -> Image:
    image = read_image(case.images[name], dtype=np.float32)
    if case.volume_index is not None:
        return Image(image.array[..., case.volume_index[name]], image.affine, image.header, image.path)
    if image.array.ndim != 3:
        raise DataError(image.path, f"{name} image must be 3-D; found shape {image.shape}")
    return image


def read_case(case: ReportCase) -> tuple[dict[str, Image], dict[str, Image]]:
    """A case's images and label maps as stored, each label map checked against the first image's grid."""
    images = {name: _read_underlay(case, name) for name in case.images}
    first = next(iter(images.values()))
    labels = {}
    for name, path in (("reference", case.reference), ("prediction", case.prediction)):
        if path is not None:
            labels[name], _ = read_label(path, case.scheme)
            check_geometry(labels[name], first)
    return images, labels


def load_case(case: ReportCase, read: tuple[dict, dict] | None = None) -> tuple[dict, dict, np.ndarray, dict]:
    """RAS underlays and labels of a case, its RAS affine, and region volumes (mL) per label map."""
    images, labels = read or read_case(case)
    images = {name: images[name] for name, _ in UNDERLAYS if name in images}
    first = next(iter(images.values()))
    volumes = {name: region_volumes_ml(lab.array, case.scheme, lab.spacing) for name, lab in labels.items()}
    ras_images = {name: figures.to_ras(im.array, im.affine)[0] for name, im in images.items()}
    ras_labels = {name: figures.to_ras(lab.array, lab.affine)[0] for name, lab in labels.items()}
    return ras_images, ras_labels, figures.to_ras(first.array, first.affine)[1], volumes


def case_figure(case: ReportCase, convention: str = "radiological",
                read: tuple[dict, dict] | None = None) -> tuple[bytes, dict]:
    """The overlay PNG of one case and its region volumes (mL) per label map."""
    images, labels, affine, volumes = load_case(case, read)
    if not labels:
        labels = {"no label": np.zeros(next(iter(images.values())).shape, dtype=np.uint8)}
    png = figures.overlay_figure(images, labels, case.scheme, affine=affine, convention=convention,
                                 title=f"{case.case_id} ({case.scheme.name} labels)")
    return png, volumes


def load_metrics(metrics_dir: Path) -> tuple[list[dict], dict | None]:
    """``metrics.csv`` rows (numbers as float) and ``summary.json`` (None if absent) of an evaluation."""
    path = Path(metrics_dir) / METRICS_FILE
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except OSError as exc:
        raise InputError(f"{path}: cannot read evaluation metrics: {exc}") from exc
    if list(reader.fieldnames or []) != list(COLUMNS):
        raise InputError(f"{path}: columns {reader.fieldnames} are not glioseg evaluate's {list(COLUMNS)}")
    try:
        rows = [{**r, **{k: float(r[k]) for k in METRIC_COLUMNS}} for r in rows]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: not glioseg evaluate's metrics: {exc}") from None
    summary_path = Path(metrics_dir) / SUMMARY_FILE
    summary = read_json(summary_path, "the evaluation summary") if summary_path.is_file() else None
    return rows, summary


def png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def html_table(header: list[str], rows: list[list[str]], cell_class=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for j, value in enumerate(row):
            cls = cell_class(j, value) if cell_class else ""
            cells.append(f'<td{f" class={cls!r}" if cls else ""}>{html.escape(str(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _summary_html(summary: dict) -> str:
    rows = []
    for region, stats in summary["regions"].items():
        d, h = stats["dice"], stats["hd95"]
        rows.append([region, d["n"], f"{_fmt(d['mean'])} ± {_fmt(d['std'])}",
                     f"{_fmt(d['median'])} [{_fmt(d['q1'])}, {_fmt(d['q3'])}]",
                     f"{_fmt(h['mean'], 2)} ± {_fmt(h['std'], 2)}",
                     f"{_fmt(h['median'], 2)} [{_fmt(h['q1'], 2)}, {_fmt(h['q3'], 2)}]",
                     _fmt(stats["sensitivity"]["mean"]), _fmt(stats["specificity"]["mean"], 5),
                     _fmt(stats["pred_ml"]["mean"], 1), _fmt(stats["ref_ml"]["mean"], 1)])
    header = ["region", "n", "Dice mean ± std", "Dice median [q1, q3]", "HD95 mm mean ± std",
              "HD95 median [q1, q3]", "sensitivity", "specificity", "pred mL", "ref mL"]
    missing = summary.get("missing_predictions") or {}
    notes = [f"Label scheme: {summary.get('scheme')}.", f"Empty masks: {summary.get('empty_mask_convention')}",
             f"Statistics: {summary.get('statistics')}."]
    if missing.get("cases"):
        notes.append(f"{len(missing['cases'])} cases without a prediction, {missing['meaning']}: "
                     f"{', '.join(missing['cases'])}.")
    return html_table(header, rows) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def _lesionwise_html(lesionwise: dict) -> str:
    """One table of the lesion-wise metric sets (glioseg evaluate --metrics lesion-...)."""
    rows = []
    for name, generation in lesionwise.items():
        for region, stats in generation["regions"].items():
            d, h = stats["dice"], stats["hd95"]
            rows.append([name, region, d["n"], f"{_fmt(d['mean'])} ± {_fmt(d['std'])}",
                         f"{_fmt(h['mean'], 2)} ± {_fmt(h['std'], 2)}", stats["tp"], stats["fp"], stats["fn"],
                         _fmt(stats["rq"]["mean"])])
    header = ["metrics", "region", "n", "lesion-wise Dice mean ± std", "lesion-wise HD95 mm mean ± std",
              "TP", "FP", "FN", "RQ mean"]
    notes = [f"{name}: {g['source']}; HD95 penalty {g['hd95_penalty_mm']:g} mm." for name, g in lesionwise.items()]
    return ("<h2>Lesion-wise metrics</h2>" + html_table(header, rows) +
            "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes))


def _metrics_html(rows: list[dict]) -> str:
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["region"]] = r
    spec = [("dice", "Dice", 3), ("hd95", "HD95 mm", 2), ("sensitivity", "sens.", 3), ("specificity", "spec.", 5)]
    header = ["case"] + [f"{region} {label}" for _, label, _ in spec for region in REGIONS]
    table = [[case] + [_fmt(regions.get(region, {}).get(key), digits) for key, _, digits in spec for region in REGIONS]
             for case, regions in by_case.items()]
    low_dice = lambda j, v: "low" if 1 <= j <= len(REGIONS) and v != "n/a" and float(v) < 0.5 else ""  # noqa: E731
    volumes = [[case] + [_fmt(regions.get(region, {}).get(k), 1) for region in REGIONS for k in ("pred_ml", "ref_ml")]
               for case, regions in by_case.items()]
    vol_header = ["case"] + [f"{region} {who} mL" for region in REGIONS for who in ("pred", "ref")]
    return ("<h3>Per case</h3>" + html_table(header, table, low_dice) +
            "<h3>Volumes</h3>" + html_table(vol_header, volumes))


def _volumes_html(volumes: dict[str, dict[str, dict[str, float]]]) -> str:
    """Volumes computed while drawing, for reports without an evaluation."""
    names = sorted({name for per_case in volumes.values() for name in per_case})
    header = ["case"] + [f"{region} {name} mL" for region in REGIONS for name in names]
    rows = [[case] + [_fmt(per_case.get(name, {}).get(region), 1) for region in REGIONS for name in names]
            for case, per_case in volumes.items()]
    return "<h3>Volumes (cases drawn below)</h3>" + html_table(header, rows)


def _precision_html(files: RunFiles, events: list[dict]) -> str:
    """The controller's verdict: the probe's measurement and decision, then time per precision."""
    summary = files.read_summary()
    if summary is None:
        return ""
    probe = next((e["reason"] for e in events if e.get("signal") == "probe"), None)
    lines = [f"policy {summary['policy']} on {summary.get('device_description', summary['device'])}"]
    if probe:
        lines.append(probe)
    if summary.get("speedup"):
        lines.append(f"measured: {summary['speedup']:.2f}x fp32's speed per step in the fastest level; "
                     f"{summary['saved_fraction']:.0%} less step time than the same steps all in fp32")
    per_step = summary.get("seconds_per_step", {})
    rows = [[p, str(n), _fmt(summary["seconds_per_precision"].get(p), 1), _fmt(per_step.get(p), 3)]
            for p, n in summary["steps_per_precision"].items() if n]
    return ("<h3>Precision</h3>" + "".join(f'<p class="note">{html.escape(line)}</p>' for line in lines) +
            html_table(["precision", "steps", "seconds", "s/step"], rows))


def _run_html(run_dir: Path) -> str:
    files = RunFiles(run_dir)
    epochs, events = files.read_metrics(), files.read_events()
    parts = [f'<p class="note">Run folder: {html.escape(str(run_dir))}; {len(epochs)} epochs.</p>',
             png_tag(figures.training_curves(run_dir), "training curves")]
    if epochs:
        last = epochs[-1]
        digits = {"epoch": 0, "seconds": 1, "train_loss": 4}
        parts.append("<h3>Last epoch</h3>" + html_table(list(CURVE_COLUMNS), [[
            last[c] if c == "precision" else _fmt(last[c], digits.get(c, 3)) for c in CURVE_COLUMNS]]))
    parts.append(_precision_html(files, events))
    if events:
        keys = ["step", "from", "to", "signal", "value"]
        parts.append(f"<h3>Precision events ({len(events)}; first 50)</h3>" +
                     html_table(keys, [[str(e.get(k, "")) for k in keys] for e in events[:50]]))
    return "<h2>Training run</h2>" + "".join(parts)


def _cases_html(shown: list[ReportCase], total: int, max_cases: int, convention: str,
                metrics: list[dict] | None, with_viewer: bool) -> str:
    sections, volumes, viewed = [], {}, []
    for case in tqdm(shown, desc="report", unit="case"):
        read = read_case(case)
        png, volumes[case.case_id] = case_figure(case, convention, read)
        sections.append(f"<h3>{html.escape(case.case_id)}</h3>{png_tag(png, case.case_id)}")
        if with_viewer:
            rows = [r for r in metrics or () if r["case"] == case.case_id]
            table = viewer.metrics_table(rows, volumes[case.case_id])
            viewed.append(viewer.viewer_case(case.case_id, case.scheme, *read, table))
    capped = f" (--max-cases {max_cases})" if len(shown) < total else ""
    parts = [] if metrics else [_volumes_html(volumes)]
    return "".join(parts + [viewer_page.viewer_section(viewed, convention), "<h2>Cases</h2>",
                            f'<p class="note">{len(shown)} of {total} cases drawn{capped}.</p>', *sections])


def write_report(out_html: Path, cases=(), metrics: list[dict] | None = None, summary: dict | None = None,
                 run_dir: Path | None = None, title: str = "glioseg report", convention: str = "radiological",
                 max_cases: int = DEFAULT_MAX_CASES, with_viewer: bool = True) -> Path:
    """Write the HTML report atomically; returns its path. ``cases``: :class:`ReportCase` list;
    ``with_viewer``: the interactive 3D viewer of the cases drawn (adds NiiVue, 2.3 MB, and the volumes)."""
    cases = list(cases)
    shown = cases[:max_cases]
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="note">glioseg {glioseg.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}. '
            f"{html.escape(figures.CONVENTION_NOTE[convention])}</p>"]
    if summary:
        body += ["<h2>Evaluation summary</h2>", _summary_html(summary)]
    if summary and summary.get("lesionwise"):
        body.append(_lesionwise_html(summary["lesionwise"]))
    if metrics:
        body.append(_metrics_html(metrics))
    if run_dir is not None:
        body.append(_run_html(Path(run_dir)))
    if shown:
        body.append(_cases_html(shown, len(cases), max_cases, convention, metrics, with_viewer))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    return write_text_atomic(out_html, page)
