"""glioseg.models.native_norm: GroupNorm in one native call each way, equal to F.group_norm; built
per source, compiler and CPU; not offered where it cannot be built."""
from __future__ import annotations

import functools
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


@pytest.fixture(params=["operator", "python"])
def built(request, monkeypatch):
    """The native GroupNorm through its C++ autograd operator, and through the Python form of the same
    two calls (what runs where the operator cannot be built)."""
    if not native_norm.available():
        pytest.skip("the native GroupNorm cannot be built here (no working C++ compiler)")
    native_norm._op.cache_clear()
    if request.param == "python":
        monkeypatch.setenv(native_norm.OP_ENV, "0")
    elif native_norm._op() is None:
        pytest.skip("the native GroupNorm's operator cannot be built here (PyTorch's headers or g++ missing)")
    yield request.param
    native_norm._op.cache_clear()


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A build of its own in an empty cache folder, probed again in this test and after it."""
    monkeypatch.setenv(native_norm.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(compiled_pass.ENV, raising=False)
    _forget_library()
    yield tmp_path
    _forget_library()


def _forget_library():
    # the operator stays loaded (once per process) and is bound again to whichever library is built
    for cached in (native_norm.available, native_norm._library, native_norm._kernels, native_norm._op):
        cached.cache_clear()


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


@pytest.mark.parametrize("torch_forward", [False, True], ids=["own-forward", "torch-forward"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n, c, g, size, affine", SHAPES)
def test_equals_torch_computed_in_double(built, torch_forward, dtype, tol, n, c, g, size, affine):
    """fp32 to float rounding, bf16 to one rounding of its output: the sums are not bf16's. With
    PyTorch's forward, the library's backward from PyTorch's statistics."""
    x, grad, w, b = _case(n, c, size, dtype, offset=5.0)
    w, b = (w, b) if affine else (None, None)
    ours = _run(lambda x, *p: native_norm.group_norm(x, g, *p, torch_forward=torch_forward), x, grad, w, b)
    # the reference: the same rounded inputs, in double
    ref = _run(lambda x, *p: F.group_norm(x, g, *p), x.double(), grad.double(),
               *(None if t is None else t.double() for t in (w, b)))
    assert ours[0].dtype == ours[1].dtype == dtype
    assert ours[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert ours[1].is_contiguous(memory_format=torch.channels_last_3d)
    if torch_forward:
        # PyTorch's fp32 channels-last statistics are less exact than the library's (E[x²] - mean² in
        # fp32: 1.7e-5 of the output at 32×40³ with mean 5): its output exactly, the gradients no
        # further from double than PyTorch's own backward's (times 2)
        torch_own = _run(lambda x, *p: F.group_norm(x, g, *p), x, grad, w, b)
        assert torch.equal(ours[0], torch_own[0])
        tols = [max(tol, 2 * _scaled_error(t, want)) for t, want in zip(torch_own, ref)]
    else:
        tols = [tol] * len(ref)
    for got, want, bound in zip(ours, ref, tols):
        assert _scaled_error(got, want) < bound


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


def test_the_operator_runs_where_it_builds_and_the_python_form_where_not(built):
    x, grad, w, b = _case(1, 16, (4, 4, 4), torch.float32)
    y = native_norm.group_norm(x.requires_grad_(), 4, w, b)
    # the operator's backward node is PyTorch's C++ node for a custom function, not a Python one
    assert ("CppNode" in y.grad_fn.name()) == (built == "operator")
    assert "GroupNormFn" in y.grad_fn.name()


@pytest.mark.parametrize("torch_forward", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_operator_and_python_form_compute_bitwise_alike(monkeypatch, dtype, torch_forward):
    """A run begun where the operator could not be built and resumed where it can (or the other way
    round) computes the same steps: both call the same library with the same arguments."""
    if not native_norm.available() or native_norm._op() is None:
        pytest.skip("needs the native library and its operator")
    x, grad, w, b = _case(2, 32, (5, 6, 7), dtype, offset=2.0)

    def fn(x, *p):
        return native_norm.group_norm(x, 8, *p, torch_forward=torch_forward)
    with_op = _run(fn, x, grad, w, b)
    monkeypatch.setenv(native_norm.OP_ENV, "0")
    native_norm._op.cache_clear()
    try:
        python = _run(fn, x, grad, w, b)
    finally:
        native_norm._op.cache_clear()
    for a, b_ in zip(with_op, python):
        assert torch.equal(a, b_)


def test_the_operator_is_built_per_pytorch_and_not_per_cpu(monkeypatch, fresh):
    path = native_norm.op_path()
    assert path.parent == fresh / "native" and path.name.startswith("groupnorm-op-")
    monkeypatch.setattr(native_norm, "_cpu_flags", lambda: "flags : avx2")
    assert native_norm.op_path() == path
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert native_norm.op_path() != path


def test_an_operator_that_cannot_be_built_leaves_the_python_form_with_one_warning(monkeypatch, fresh, caplog):
    def fail(*args):
        raise RuntimeError("g++ failed on native_norm_op.cpp: torch/library.h: No such file")
    monkeypatch.setattr(native_norm, "_compile", fail)
    with caplog.at_level(logging.WARNING, logger=native_norm.__name__):
        assert native_norm._loaded_op.__wrapped__() is False   # the uncached function: this process keeps its own
    assert len(caplog.records) == 1 and "Python form runs" in caplog.text and "No such file" in caplog.text
    assert not (fresh / "native").exists() or not any((fresh / "native").iterdir())


def test_the_operator_refuses_what_it_cannot_normalise_when_called_directly(built):
    if built != "operator":
        pytest.skip("the operator's own checks")
    op = native_norm._op()
    x = torch.zeros(1, 4, 2, 2, 2).contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(RuntimeError, match="channels-last fp32 / bf16"):
        op(x.contiguous(), None, None, 2, 1e-5, False)
    with pytest.raises(RuntimeError, match="divisible"):
        op(x, None, None, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match="one value per channel"):
        op(x, torch.ones(3), None, 2, 1e-5, False)


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
    # the operator too where this test happened to be the process's first to load it
    names = {p.name for p in (fresh / "native").iterdir()}
    assert names in ({native_norm.library_path().name}, {native_norm.library_path().name, native_norm.op_path().name})


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


@pytest.mark.parametrize("route", ["operator", "python"])
def test_a_library_that_computes_wrongly_is_not_offered(monkeypatch, fresh, caplog, route):
    if not native_norm.available():
        pytest.skip("no working C++ compiler here")
    native_norm.available.cache_clear()
    if route == "python":
        monkeypatch.setenv(native_norm.OP_ENV, "0")
        native_norm._op.cache_clear()
        real = native_norm._backward
        monkeypatch.setattr(native_norm, "_backward", lambda *a, **k: (lambda g: (g[0] * 1.01, *g[1:]))(real(*a, **k)))
    elif native_norm._op() is None:
        pytest.skip("the operator cannot be built here")
    else:
        op = native_norm._op()
        wrong = functools.lru_cache(maxsize=1)(lambda: lambda *a: op(*a) * 1.01)   # cleared like _op
        monkeypatch.setattr(native_norm, "_op", wrong)
    with caplog.at_level(logging.WARNING, logger=native_norm.__name__):
        assert native_norm.available() is False
    assert "disagrees" in caplog.text
