"""glioseg.cpu_allocator: freed blocks stay in the heap, so the next allocation faults no pages."""
from __future__ import annotations

import resource

import pytest
import torch

from glioseg import cpu_allocator


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_done", False)


def test_sets_both_thresholds_once(fresh):
    calls = []
    assert cpu_allocator.keep_freed_memory(lambda param, value: calls.append((param, value)) or 1)
    assert calls == [(cpu_allocator.M_MMAP_THRESHOLD, cpu_allocator.MMAP_THRESHOLD),
                     (cpu_allocator.M_TRIM_THRESHOLD, cpu_allocator.TRIM_THRESHOLD)]
    assert cpu_allocator.keep_freed_memory(lambda *a: pytest.fail("set twice"))


def test_a_refusing_or_missing_mallopt_changes_nothing(fresh, monkeypatch):
    assert not cpu_allocator.keep_freed_memory(lambda param, value: 0)
    monkeypatch.setattr(cpu_allocator, "_mallopt", lambda: None)
    assert not cpu_allocator.keep_freed_memory()


def faults_of_an_allocation(numel: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(numel)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_freed_large_tensor_is_reused_without_page_faults(fresh):
    if cpu_allocator._mallopt() is None:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert cpu_allocator.keep_freed_memory()
    numel = 64 * 2 ** 20 // 4                      # 64 MiB: mmap'd by default (threshold <= 32 MiB)
    faults_of_an_allocation(numel)                  # the heap grows once
    pages = numel * 4 // 4096
    assert faults_of_an_allocation(numel) < pages // 10
