"""glioseg.models.native_norm: GroupNorm in one native call each way, equal to F.group_norm; built
per source, compiler and CPU; not offered where it cannot be built."""
from __future__ import annotations

import logging
import platform

import pytest
import torch
import torch.nn.functional as F

from glioseg.models import compiled_pass, native_norm

# (batch, channels, groups, spatial size, affine): rows folded (6, 16 channels) or not (odd voxel
# counts), one channel per group (instance norm), one group (layer norm); SegResNet's deepest level
# at a 96³ patch (128×12³) and more voxels than one block of sums (32×40³)
SHAPES = [
    (1, 16, 8, (6, 5, 4), True),
    (2, 6, 3, (3, 4, 5), True),
    (1, 8, 8, (3, 5, 7), False),
    (3, 6, 1, (4, 3, 5), True),
    (2, 64, 8, (3, 3, 3), True),
    (1, 128, 8, (12, 12, 12), True),
    (1, 32, 8, (40, 40, 40), True),
]


@pytest.fixture
def built():
    if not native_norm.available():
        pytest.skip("the native GroupNorm cannot be built here (no working C++ compiler)")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A build of its own in an empty cache folder, probed again in this test and after it."""
    monkeypatch.setenv(native_norm.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(compiled_pass.ENV, raising=False)
    native_norm.available.cache_clear()
    native_norm._library.cache_clear()
    native_norm._function.cache_clear()
    yield tmp_path
    native_norm.available.cache_clear()
    native_norm._library.cache_clear()
    native_norm._function.cache_clear()


def _case(n, c, size, dtype, offset=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, *size, generator=generator, dtype=torch.float64) * 3 + offset).to(dtype)
    grad = torch.randn(n, c, *size, generator=generator, dtype=torch.float64).to(dtype)
    w, b = torch.randn(c, generator=generator), torch.randn(c, generator=generator)
    return x.contiguous(memory_format=torch.channels_last_3d), grad, w, b


def _run(fn, x, grad, w, b):
    """(y, dx, dw, db) of ``fn`` with fresh leaves."""
    x = x.detach().clone().requires_grad_()
    params = [None if t is None else t.detach().clone().requires_grad_() for t in (w, b)]
    y = fn(x, *params)
    inputs = [x] + [t for t in params if t is not None]
    return (y, *torch.autograd.grad(y, inputs, grad))


def _scaled_error(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n, c, g, size, affine", SHAPES)
def test_equals_torch_computed_in_double(built, dtype, tol, n, c, g, size, affine):
    """fp32 to float rounding, bf16 to one rounding of its output: the sums are not bf16's."""
    x, grad, w, b = _case(n, c, size, dtype, offset=5.0)
    w, b = (w, b) if affine else (None, None)
    ours = _run(lambda x, *p: native_norm.group_norm(x, g, *p), x, grad, w, b)
    # the reference: the same rounded inputs, in double
    ref = _run(lambda x, *p: F.group_norm(x, g, *p), x.double(), grad.double(),
               *(None if t is None else t.double() for t in (w, b)))
    assert ours[0].dtype == ours[1].dtype == dtype
    assert ours[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert ours[1].is_contiguous(memory_format=torch.channels_last_3d)
    for got, want in zip(ours, ref):
        assert _scaled_error(got, want) < tol


def test_only_the_gradients_asked_for(built):
    x, grad, w, b = _case(1, 16, (4, 4, 4), torch.float32)
    wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
    y = native_norm.group_norm(x, 4, wl, bl)                   # x needs no gradient
    dw, db = torch.autograd.grad(y, (wl, bl), grad)
    ref_w, ref_b = w.clone().requires_grad_(), b.clone().requires_grad_()
    # the reference on a contiguous x: PyTorch 2.13's channels-last backward crashes without dx
    want = torch.autograd.grad(F.group_norm(x.contiguous(), 4, ref_w, ref_b), (ref_w, ref_b), grad)
    torch.testing.assert_close((dw, db), want, rtol=1e-5, atol=1e-5)


def test_same_result_each_call_and_close_on_any_thread_count(built):
    x, grad, w, b = _case(1, 32, (8, 8, 8), torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(lambda x, *p: native_norm.group_norm(x, 8, *p), x, grad, w, b)
        torch.set_num_threads(2)
        two = [_run(lambda x, *p: native_norm.group_norm(x, 8, *p), x, grad, w, b) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(*two):       # bitwise: a resumed run repeats its steps exactly
        assert torch.equal(a, b_)
    for a, b_ in zip(one, two[0]):
        torch.testing.assert_close(a.float(), b_.float(), rtol=1e-2, atol=1e-2)


def test_refuses_what_it_cannot_normalise(built):
    with pytest.raises(ValueError, match="fp32 / bf16"):
        native_norm.group_norm(torch.zeros(1, 4, 2, 2, 2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="divisible by 3 groups"):
        native_norm.group_norm(torch.zeros(1, 4, 2, 2, 2), 3)
    with pytest.raises(ValueError, match="weight of shape"):      # the library would read past it
        native_norm.group_norm(torch.zeros(1, 4, 2, 2, 2), 2, torch.ones(3))


def test_one_library_per_source_compiler_and_cpu(monkeypatch, fresh):
    path = native_norm.library_path()
    assert path.parent == fresh / "native" and path.suffix == ".so"
    monkeypatch.setattr(native_norm, "_cpu_flags", lambda: "flags : avx2")
    other_cpu = native_norm.library_path()
    monkeypatch.setattr(native_norm, "_cpu_flags", lambda: "flags : avx512f avx512_bf16")
    assert len({path, other_cpu, native_norm.library_path()}) == 3


def test_built_once_into_the_cache_and_nothing_else_left_there(fresh):
    if not native_norm.available():
        pytest.skip("no working C++ compiler here")
    assert [p.name for p in (fresh / "native").iterdir()] == [native_norm.library_path().name]


def test_a_failing_compiler_means_not_offered_with_one_warning(monkeypatch, fresh, caplog):
    monkeypatch.setenv("CXX", "false")          # runs, and fails, like a broken compiler
    with caplog.at_level(logging.WARNING, logger=native_norm.__name__):
        assert native_norm.available() is False
        assert native_norm.available() is False
    assert len(caplog.records) == 1 and "not available" in caplog.text
    assert not (fresh / "native").exists() or not any((fresh / "native").iterdir())


def test_switched_off_by_the_environment(monkeypatch, fresh):
    monkeypatch.setenv(compiled_pass.ENV, "0")
    monkeypatch.setattr(native_norm, "build", lambda path: pytest.fail("built although switched off"))
    assert native_norm.available() is False


@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3"])
def test_correct_for_older_instruction_sets(monkeypatch, fresh, march):
    """The source built for an SSE2-only or an AVX2 CPU (what -march=native gives there), run here."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 instruction sets")
    flags = tuple(f"-march={march}" if f == "-march=native" else f for f in native_norm._FLAGS)
    monkeypatch.setattr(native_norm, "_FLAGS", flags)
    if not native_norm.available():
        pytest.skip("no working C++ compiler here")
    assert march in " ".join(native_norm._FLAGS) and native_norm.library_path().exists()
    for dtype, tol in ((torch.float32, 2e-6), (torch.bfloat16, 1e-2)):
        x, grad, w, b = _case(2, 32, (4, 5, 6), dtype, offset=3.0)
        ours = _run(lambda x, *p: native_norm.group_norm(x, 8, *p), x, grad, w, b)
        ref = _run(lambda x, *p: F.group_norm(x, 8, *p), x.double(), grad.double(), w.double(), b.double())
        for got, want in zip(ours, ref):
            assert _scaled_error(got, want) < tol


def test_a_library_that_computes_wrongly_is_not_offered(monkeypatch, fresh, caplog):
    if not native_norm.available():
        pytest.skip("no working C++ compiler here")
    native_norm.available.cache_clear()
    real = native_norm._backward
    monkeypatch.setattr(native_norm, "_backward", lambda *a, **k: (lambda g: (g[0] * 1.01, *g[1:]))(real(*a, **k)))
    with caplog.at_level(logging.WARNING, logger=native_norm.__name__):
        assert native_norm.available() is False
    assert "disagrees" in caplog.text
