"""The CLI spells the engines' vocabularies itself (so that ``--help`` imports no engine): each
choice list must be the one its engine defines, and each is defined once there."""
from __future__ import annotations

import argparse

import pytest

from glioseg import cli
from glioseg.data.formats import CHANNELS, FORMATS
from glioseg.data.labels import SCHEMES
from glioseg.evaluation.evaluate import MISSING_POLICIES
from glioseg.evaluation.figures import CONVENTIONS
from glioseg.evaluation.lesion_scores import METRICS
from glioseg.experiments.executors import EXECUTORS
from glioseg.inference import predictor
from glioseg.inference.export import FORMATS as EXPORT_FORMATS
from glioseg.inference.predictor import WINDOWS
from glioseg.precisions import POLICIES, PRECISIONS
from glioseg.training.precision import config as precision_config


def _action(command: str, flag: str, action: str | None = None) -> argparse.Action:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    if action is not None:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[action]
    return next(a for a in parser._actions if flag in a.option_strings)


def _choices(command: str, flag: str, action: str | None = None) -> tuple:
    return tuple(_action(command, flag, action).choices)


@pytest.mark.parametrize("command", ["verify", "preprocess", "evaluate", "report", "train"])
def test_format_choices_are_the_discovery_formats(command):
    assert _choices(command, "--format") == FORMATS


@pytest.mark.parametrize("command", ["train", "predict"])
def test_precision_choices_are_the_precision_policies(command):
    assert _choices(command, "--precision") == POLICIES


def test_precision_policies_are_defined_once():
    # training and prediction take the ground floor's tuple, not a copy of it
    assert precision_config.POLICIES is POLICIES and predictor.POLICIES is POLICIES
    assert POLICIES == ("auto", *PRECISIONS)


def test_other_choices_are_the_engines():
    assert _choices("predict", "--scheme") == tuple(SCHEMES)
    assert _choices("export", "--format") == EXPORT_FORMATS
    assert _choices("evaluate", "--missing") == MISSING_POLICIES
    assert _choices("report", "--convention") == CONVENTIONS
    assert cli.METRIC_SETS == METRICS


def test_metric_sets_are_checked_by_the_parser():
    parse = cli.build_parser().parse_args
    args = parse(["evaluate", "--pred", "p", "--ref", "r", "--out", "o", "--metrics", "region,lesion-2025"])
    assert args.metrics == ("region", "lesion-2025")
    assert parse(["evaluate", "--pred", "p", "--ref", "r", "--out", "o"]).metrics == ("region",)
    with pytest.raises(SystemExit):
        parse(["evaluate", "--pred", "p", "--ref", "r", "--out", "o", "--metrics", "lesion-2022"])
    assert _choices("experiment", "--executor", "run") == EXECUTORS
    assert cli.CHANNELS == CHANNELS and all(_action("predict", f"--{c}").metavar == "FILE" for c in CHANNELS)


def test_the_window_help_names_every_window():
    help_text = _action("predict", "--roi").help
    assert all(f"'{w}'" in help_text for w in WINDOWS)


def test_predict_defaults_to_auto():
    args = cli.build_parser().parse_args(["predict", "x", "--checkpoint", "m.pt", "--out", "o"])
    assert args.precision == "auto"
