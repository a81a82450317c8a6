"""``DIR/report/``: ``<name>.md`` with its figures beside it, and one self-contained ``<name>.html``.

``<name>`` is the spec's name, and the figures are ``<name>-<figure>.png``, so the reports of
several experiments can share one folder (``glioseg experiment report DIR --out docs/results``).
The report reads only ``DIR/experiment.json`` and ``DIR/results/``: the committed result files
are enough to write it again.

Both come from the same sections: how the experiment was run (command, machine, budget and how
far a result at that budget carries), progress, the folds, the settings that differ between
arms, scores per arm, the comparisons against the reference arm as tables and plain sentences,
cost per arm, and the figures.
"""
from __future__ import annotations

import datetime
import html
import json
import re
from collections import Counter
from pathlib import Path

import glioseg
from glioseg.evaluation.report import CSS, html_table, png_tag
from glioseg.experiments import figures
from glioseg.experiments.plan import EXPERIMENT_FILE, Plan
from glioseg.experiments.records import RunResult
from glioseg.experiments.results import Results, arm_scores, comparisons, cost, device_of, devices
from glioseg.experiments.stats import format_p, signed
from glioseg.files import atomic_path, read_json, write_text_atomic

STATISTICS_NOTE = (
    "Scores: mean ± sd (sample) and median over every (case, seed) of held-out cases; 'over seeds' is the "
    "sd of the per-seed means. Δ = arm − reference over the (case, seed) pairs both scored; CI and p treat "
    "each case as one unit (its differences averaged over seeds): percentile bootstrap 95 % CI of the mean, "
    "Wilcoxon signed-rank p, Holm-corrected across the arms compared for one region and metric.")


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _score_table(rows: list[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    digits = 3 if metric == "dice" else 2
    regions = list(dict.fromkeys(r["region"] for r in rows))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    cell = {(r["arm"], r["region"]): r for r in rows if r["metric"] == metric}
    header = ["arm", "runs"] + [f"{reg} {'Dice' if metric == 'dice' else 'HD95 mm'}" for reg in regions]
    body = []
    for arm in arms:
        cells = []
        for reg in regions:
            r = cell[(arm, reg)]
            seeds = f", over seeds ± {_num(r['seed_sd'], digits)}" if r["seed_sd"] is not None else ""
            cells.append(f"{_num(r['mean'], digits)} ± {_num(r['sd'], digits)} (median {_num(r['median'], digits)}, "
                         f"n {r['n']}{seeds})")
        body.append([arm, str(cell[(arm, regions[0])]["runs"])] + cells)
    return header, body


def _per_device(row: dict, key: str, order: list[str], digits: int) -> str:
    """``key`` of the arm's runs on each device, cited by the device's number (one device: the value)."""
    if len(order) <= 1:
        return _num(row[key], digits)
    return "; ".join(f"{_num(v[key], digits)} [{order.index(d) + 1}]" for d, v in row["timed_on"].items()) or "n/a"


def _cost_table(rows: list[dict], order: list[str]) -> tuple[list[str], list[list[str]]]:
    """The cost per arm; where runs were timed on several devices (``order``: main first), s/step and
    training time per device."""
    target = rows[0].get("target_dice") if rows else None
    header = ["arm", "model", "runs", "parameters", "GFLOP / patch", "s/step", "peak MiB", "train s / run",
              "steps", "precision"]
    if target is not None:
        header += [f"runs reaching val Dice {target:g}", "s to reach it", "steps to reach it"]
    body = []
    for r in rows:
        line = [r["arm"], r["model"], str(r["runs"]), f"{r['params']:,}" if r["params"] else "n/a",
                _num(r["flops"] / 1e9 if r["flops"] else None, 2), _per_device(r, "s_per_step", order, 2),
                _num(r["peak_mib"], 0), _per_device(r, "train_s", order, 0), _num(r["steps"], 0),
                ", ".join(r["precision"]) or (f"not run: {r['not_run']}" if r["not_run"] else "")]
        if target is not None:
            line += [f"{r['reached']} of {r['runs']}", _num(r["time_to_target_s"], 0), _num(r["steps_to_target"], 0)]
        body.append(line)
    return header, body


def _about(results: Results, command: str | None, machine: dict | None) -> list[tuple]:
    """How the experiment was run: command, machine, budget (and what it means), progress."""
    plan, spec = results.plan, results.plan.spec
    budget = plan.resolved.budget
    out: list[tuple] = [("h1", f"glioseg experiment: {spec.name}"), ("p", spec.description),
                        ("p", f"Command: `{command or 'glioseg experiment run ...'}`")]
    if machine:
        # An experiment continued elsewhere records its latest command and machine; the runs' own
        # devices follow in timing_conditions.
        out.append(("p", f"Machine of that command: {machine.get('cpu')}, {machine.get('cores')} cores"
                         f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}; torch {machine.get('torch')}."))
    out.append(("p", f"Budget `{plan.resolved.budget_name}`: " + ", ".join(
        f"{k} {getattr(budget, k)}" for k in ("steps", "epochs", "minutes", "steps_per_epoch", "device")
        if getattr(budget, k) is not None) + f". {budget.description}".rstrip()))
    total = len([r for r in plan.runs if r.arm not in plan.not_run])
    out.append(("p", f"{len(results.runs)} of {total} runs finished ({len(spec.arms)} arms, {spec.folds.k} folds, "
                     f"seeds {', '.join(map(str, spec.seeds))}); {len(plan.strata)} cases, each held out once "
                     "per seed."))
    if plan.sources is not None:   # several datasets: where the cases come from
        out.append(("p", f"The cases come from {len(set(plan.sources.values()))} datasets: " + ", ".join(
            f"{name} {n}" for name, n in plan.by_source(plan.strata).items())
            + "; a case of unknown site is stratified by its dataset."))
    out += [("p", f"Arm {arm} was not run on this machine: {why}.") for arm, why in plan.not_run.items()]
    if results.runs:
        out.append(("p", timing_conditions(list(results.runs.values()))))
    return out


def timing_conditions(runs: list[RunResult]) -> str:
    """What the finished runs were timed on (device, its torch threads) and the load around them; an
    experiment continued on another machine has runs timed on each, numbered as the cost table
    cites them, the main device (most runs) first."""
    timed = Counter(device_of(r) for r in runs).most_common()
    loads = [x for r in runs for attempt in (r.cost.load or []) for x in attempt if x is not None]
    number = (lambda i: f"[{i}] ") if len(timed) > 1 else (lambda i: "")
    text = "Runs timed on " + "; ".join(f"{number(i)}{d} ({n} runs)" for i, (d, n) in enumerate(timed, 1))
    if loads:
        text += f"; load average {min(loads):.1f}-{max(loads):.1f} at the starts and ends of training"
    unrecorded = sum(not r.cost.load for r in runs)
    if unrecorded:
        text += f" (not recorded for {unrecorded} runs)"
    return text + ". s/step and training time are wall-clock: compare them only between runs timed alike."


def _design(plan: Plan) -> list[tuple]:
    """What differs between the arms, and the folds' balance of sites and grades."""
    names, first = plan.resolved.arm_names, plan.spec.seeds[0]
    differences = plan.resolved.differences()
    # one arm, or arms that differ in nothing: a sentence, not a table without rows
    what = ([("p", "One arm: nothing to compare (its settings: the experiment folder's `experiment.json`).")]
            if len(names) == 1 else
            [("p", "The arms' settings are identical (they differ only in name or description).")]
            if not differences else
            [("table", ["setting"] + names, [[k] + [json.dumps(v[a]) for a in names] for k, v in differences.items()])])
    return [("h2", "What differs between arms"), *what,
            ("h2", f"Folds (seed {first}): cases per site/grade and fold"),
            ("table", ["stratum"] + [f"fold {k}" for k in range(plan.spec.folds.k)],
             [[s] + [str(n) for n in counts] for s, counts in plan.balance(first).items()])]


def _comparisons(comps: list) -> list[tuple]:
    header = ["arm", "region", "metric", "pairs", "cases", "Δ mean", "95 % CI", "p", "p (Holm)", "verdict"]
    rows = [[c.arm, c.region, c.metric, str(c.n_pairs), str(c.n_cases), signed(c.delta, 3),
             f"[{signed(c.ci[0], 3)}, {signed(c.ci[1], 3)}]", format_p(c.p), format_p(c.p_holm), c.verdict]
            for c in comps]
    return [("p", c.sentence()) for c in comps if c.metric == "dice"] + [("table", header, rows),
                                                                         ("p", STATISTICS_NOTE)]


def sections(results: Results, command: str | None, machine: dict | None) -> list[tuple]:
    """The report as ("h2", text) / ("p", text) / ("table", header, rows) / ("img", name, file, png)."""
    spec = results.plan.spec
    out = _about(results, command, machine) + _design(results.plan)
    scores = arm_scores(results)
    out.append(("h2", "Scores on held-out whole cases"))
    out += [("table", *_score_table(scores, metric)) for metric in spec.evaluation.metrics]
    comps = comparisons(results)
    out += [("h2", f"Against the reference arm {spec.reference}")] + _comparisons(comps)
    cost_rows = cost(results)
    out += [("h2", "Cost per arm"), ("table", *_cost_table(cost_rows, devices(results)))]
    if results.runs:
        drawn = {"dice boxplots": figures.box_plots(results), "paired differences": figures.difference_plot(comps),
                 "dice vs cost": figures.dice_vs_cost(results, cost_rows),
                 "validation curves": figures.validation_curves(results)}
        out.append(("h2", "Figures"))
        out += [("img", name, f"{spec.name}-{name.replace(' ', '_')}.png", png) for name, png in drawn.items()]
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def to_markdown(parts: list[tuple]) -> str:
    text = []
    for part in parts:
        kind = part[0]
        if kind in ("h1", "h2"):
            text.append(("# " if kind == "h1" else "## ") + part[1])
        elif kind == "p" and part[1]:
            text.append(part[1])
        elif kind == "table":
            text.append(_markdown_table(part[1], part[2]))
        elif kind == "img":
            text.append(f"![{part[1]}]({part[2]})")
    return "\n\n".join(text) + "\n"


def to_html(parts: list[tuple], title: str) -> str:
    body = []
    for part in parts:
        kind = part[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(part[1])}</{kind}>")
        elif kind == "p" and part[1]:
            body.append("<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(part[1])) + "</p>")
        elif kind == "table":
            body.append(html_table(part[1], part[2]))
        elif kind == "img":
            body.append(f"<p>{png_tag(part[3], part[1])}</p>")
    note = f'<p class="note">glioseg {glioseg.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}.</p>'
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}{note}</body></html>")


def write_report(plan: Plan, results: Results, folder: Path | None = None) -> Path:
    """Write ``<name>.md`` (+ PNGs) and ``<name>.html`` into ``folder`` (default ``DIR/report``);
    returns the Markdown file."""
    folder = Path(folder or plan.out / "report")
    saved = read_json(plan.out / EXPERIMENT_FILE, "an experiment plan")
    parts = sections(results, saved.get("command"), saved.get("machine"))
    for part in parts:
        if part[0] == "img":
            with atomic_path(folder / part[2]) as tmp:
                tmp.write_bytes(part[3])
    name = plan.spec.name
    write_text_atomic(folder / f"{name}.html", to_html(parts, f"glioseg experiment {name}"))
    write_text_atomic(folder / f"{name}.md", to_markdown(parts))
    return folder / f"{name}.md"
