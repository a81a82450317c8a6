"""glioseg.models.kernel_choice: measured once per shape, torch's kernel unless beaten by a margin."""
from __future__ import annotations

import itertools

import pytest
import torch

from glioseg.models import kernel_choice


pytestmark = pytest.mark.usefixtures("measured_kernels")


def test_fastest_needs_the_margin_to_leave_torch():
    assert kernel_choice.fastest({"torch": 1.0, "a": 0.97}) == "torch"        # 3 %: noise
    assert kernel_choice.fastest({"torch": 1.0, "a": 0.90, "b": 0.80}) == "b"
    assert kernel_choice.fastest({"torch": 0.5, "a": 0.90}) == "torch"
    assert kernel_choice.fastest({"a": 2.0, "b": 1.0}) == "b"


def test_measure_interleaves_and_keeps_the_minimum():
    order = []
    ticks = itertools.count()
    candidates = {name: (lambda name=name: order.append(name)) for name in ("torch", "a")}
    times = kernel_choice.measure(candidates, repeats=3, clock=lambda: next(ticks), close=0.0)
    assert order == ["torch", "a"] + ["torch", "a"] * 3          # warm-up, then A B A B A B
    assert times == {"torch": 1, "a": 1}


@pytest.mark.parametrize("gap, rounds", [(0.5, 3), (0.05, 6)])
def test_measure_takes_more_rounds_only_when_the_two_fastest_are_close(gap, rounds):
    """Forms 50 % apart: 3 rounds decide. Forms 5 % apart: 3 more rounds, whose faster minimum of
    "b" then wins (a 10 % gap flipped between two measurements of one process on a Zen 4)."""
    seconds = {"torch": [2.0] * 6, "a": [1.0] * 6, "b": [1.0 + gap] * 4 + [0.9, 1.0 + gap]}
    calls = {name: iter(values) for name, values in seconds.items()}
    ran = dict.fromkeys(seconds, 0)
    now = [0.0]

    def runner(name):
        def run():
            ran[name] += 1
            if ran[name] > 1:                    # the warm-up is not timed
                now[0] += next(calls[name])
        return run
    times = kernel_choice.measure({name: runner(name) for name in seconds}, repeats=3, clock=lambda: now[0])
    assert ran == dict.fromkeys(seconds, 1 + rounds)
    assert times["a"] == pytest.approx(1.0) and times["torch"] == pytest.approx(2.0)
    assert times["b"] == pytest.approx(0.9 if rounds == 6 else 1.0 + gap)
    assert kernel_choice.fastest(times) == ("b" if rounds == 6 else "a")


def test_choose_measures_once_per_key(monkeypatch):
    calls = []
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: calls.append(1) or {"torch": 2.0, "a": 1.0})
    names = ("torch", "a")
    assert kernel_choice.choose("k1", names, lambda: {}) == "a"
    assert kernel_choice.choose("k1", names, lambda: pytest.fail("candidates built again")) == "a"
    assert len(calls) == 1
    assert kernel_choice.decisions() == {"k1": "a"}


def test_restore_brings_a_runs_choices_back(monkeypatch):
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: pytest.fail("measured a restored key"))
    kernel_choice.restore({"k1": "torch"})
    kernel_choice.restore(None)                                  # a checkpoint of an earlier version
    assert kernel_choice.choose("k1", ("torch", "a"), lambda: {}) == "torch"


def test_a_restored_choice_this_machine_lacks_is_measured_again(monkeypatch, caplog):
    """A run resumed where its saved kernel (the compiled pass) cannot run: measured anew, said."""
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: {"torch": 2.0, "matmul": 1.0})
    kernel_choice.restore({"k1": "compiled"})
    assert kernel_choice.choose("k1", ("torch", "matmul"), lambda: {}) == "matmul"
    assert kernel_choice.decisions() == {"k1": "matmul"}
    assert "saved choice 'compiled' is not available here" in caplog.text


@pytest.mark.parametrize("value, expected", [("torch", "torch"), ("glioseg", "a"), ("b", "b")])
def test_forced_by_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(kernel_choice.ENV, value)
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: pytest.fail("measured although forced"))
    assert kernel_choice.choose("k", ("torch", "a", "b"), lambda: {}) == expected
    assert not kernel_choice.decisions()


def test_a_forced_name_that_does_not_exist_is_an_error(monkeypatch):
    monkeypatch.setenv(kernel_choice.ENV, "fastest-please")
    with pytest.raises(ValueError, match="GLIOSEG_KERNELS"):
        kernel_choice.choose("k", ("torch", "a"), lambda: {})


def test_key_names_shape_dtype_layout_and_threads():
    x = torch.zeros(1, 8, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    key = kernel_choice.key_of("group_norm", x, 4)
    assert key == f"group_norm/1x8x4x4x4/float32/cl/t{torch.get_num_threads()}/4"
    assert kernel_choice.key_of("group_norm", x.contiguous(), 4) != key
