"""The CLI spells some vocabularies itself (so that ``--help`` imports no torch): they must be the
engines' own."""
from __future__ import annotations

import argparse

from glioseg import cli
from glioseg.inference.predictor import POLICIES as PREDICT_POLICIES
from glioseg.training.precision_config import POLICIES as TRAIN_POLICIES


def _choices(command: str, flag: str) -> tuple:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_precision_choices_are_the_engines():
    assert set(_choices("train", "--precision")) == set(TRAIN_POLICIES)
    assert set(_choices("predict", "--precision")) == set(PREDICT_POLICIES)


def test_predict_defaults_to_auto():
    args = cli.build_parser().parse_args(["predict", "x", "--checkpoint", "m.pt", "--out", "o"])
    assert args.precision == "auto"
