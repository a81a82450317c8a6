"""The CLI: a user error (a GliosegError, an OSError, out of memory) is one line and exit 2; any other
error is a bug: its traceback, a line saying so, exit 1. ``--debug`` shows the traceback of both."""
from __future__ import annotations

import logging

import pytest

import glioseg
from glioseg.checkpoint_io import CheckpointError
from glioseg.cli import main
from glioseg.data import cases, verify
from glioseg.data.errors import DataError
from glioseg.errors import FileError, GliosegError, InputError
from glioseg.inference.released import ReleasedModelError


def _failing_verify(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(verify, "verify_dataset", fail)


@pytest.mark.parametrize("error, words", [
    (MemoryError(), "out of memory; free memory, use fewer --workers, or lower --max-image-mb to refuse large "
                    "images before reading them"),
    (DataError("/data/x.nii.gz", "truncated"), "/data/x.nii.gz: truncated"),
    (InputError("--roi takes box, patch or volume"), "--roi takes box, patch or volume"),
    (FileNotFoundError(2, "No such file or directory", "x.yaml"), "[Errno 2] No such file or directory: 'x.yaml'"),
])
def test_a_user_error_is_one_line_and_exit_2(brats_root, monkeypatch, caplog, capsys, error, words):
    _failing_verify(monkeypatch, error)
    with caplog.at_level(logging.INFO):
        assert main(["verify", str(brats_root)]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [words] and errors[0].exc_info is None
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(type(error)):
        main(["--debug", "verify", str(brats_root)])


def test_any_other_error_is_a_bug_with_its_traceback_and_exit_1(brats_root, monkeypatch, caplog, capsys):
    _failing_verify(monkeypatch, RuntimeError("boom"))
    with caplog.at_level(logging.INFO):
        assert main(["verify", str(brats_root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"internal error of glioseg {glioseg.__version__} (a bug, not a problem of the input); "
                      "please report it with the traceback above"]
    with pytest.raises(RuntimeError):
        main(["--debug", "verify", str(brats_root)])


def test_user_errors_are_glioseg_errors_and_value_errors():
    for kind in (DataError, CheckpointError, ReleasedModelError, FileError):
        assert issubclass(kind, GliosegError) and issubclass(kind, InputError) and issubclass(kind, ValueError)
    assert str(CheckpointError("run/last.pt", "checkpoint not found")) == "run/last.pt: checkpoint not found"


def test_a_reader_failing_on_one_case_fails_that_case_only(brats_root, monkeypatch, capsys):
    real = cases.read_channels

    def fail_on_the_second(path, names, case, verify_stream=True):
        if case.case_id.endswith("101_1"):
            raise KeyError("a reader's own error")
        return real(path, names, case, verify_stream)

    monkeypatch.setattr(cases, "read_channels", fail_on_the_second)
    assert main(["verify", str(brats_root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "cannot be checked: KeyError: \"a reader's own error\"" in out and "1 valid, 1 invalid" in out


def test_ctrl_c_is_exit_130_without_a_traceback(brats_root, monkeypatch, caplog, capsys):
    _failing_verify(monkeypatch, KeyboardInterrupt())
    assert main(["verify", str(brats_root)]) == 130
    assert "interrupted" in caplog.text and "Traceback" not in capsys.readouterr().err
