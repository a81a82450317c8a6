"""The CLI: every failure is one line and a non-zero exit; ``--debug`` shows the traceback."""
from __future__ import annotations

import logging

import pytest

from glioseg.cli import main
from glioseg.data import cases, verify


@pytest.mark.parametrize("error, words", [
    (MemoryError(), "out of memory; free memory, use fewer --workers, or lower --max-image-mb to refuse large "
                    "images before reading them"),
    (RuntimeError("boom"), "unexpected RuntimeError: boom (glioseg --debug shows the traceback)"),
])
def test_an_unexpected_error_is_one_line_without_debug(brats_root, monkeypatch, caplog, error, words):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(verify, "verify_dataset", fail)
    with caplog.at_level(logging.INFO):
        assert main(["verify", str(brats_root)]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [words] and errors[0].exc_info is None
    with pytest.raises(type(error)):
        main(["--debug", "verify", str(brats_root)])


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
