"""glioseg.models.compiled_pass: the fused per-channel sum equals its eager form; off where asked or
where compiling fails."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from glioseg.models import compiled_pass


def _tensors(dtype, n=2, c=6, size=(5, 7, 4), seed=0):
    generator = torch.Generator().manual_seed(seed)

    def cl():
        return torch.randn(n, c, *size, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    return cl(), torch.randn(n, c, generator=generator), cl(), torch.randn(n, c, generator=generator), \
        torch.randn(n, c, generator=generator)


@pytest.fixture
def fresh_probe(monkeypatch):
    """A probe that runs again in this test (and again after it, for the other tests)."""
    compiled_pass.available.cache_clear()
    yield
    compiled_pass.available.cache_clear()


def test_eager_form_is_the_per_channel_sum_in_fp32():
    dy, a, x, b, c = _tensors(torch.bfloat16)
    want = (dy.double() * a.double()[..., None, None, None] + x.double() * b.double()[..., None, None, None]
            + c.double()[..., None, None, None])
    got = compiled_pass.scaled_sum_eager(dy, a, x, b, c)
    assert got.dtype == torch.bfloat16
    # one rounding to bf16 at the end, none on the way
    torch.testing.assert_close(got, want.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_compiled_equals_eager_for_any_shape_and_keeps_channels_last(dtype):
    if not compiled_pass.available():
        pytest.skip("no working torch.compile (C++ compiler) on this machine")
    # rows folded 2x and 3x (bf16, fp32), and not folded: wide enough, or a last axis 2 does not divide
    for n, c, size in ((1, 16, (6, 5, 4)), (2, 12, (4, 5, 6)), (1, 32, (9, 3, 5)), (1, 16, (4, 5, 3))):
        tensors = _tensors(dtype, n, c, size)
        got = compiled_pass.scaled_sum_compiled(*tensors)
        want = compiled_pass.scaled_sum_eager(*tensors)
        assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last_3d)
        # fused multiply-adds may round differently from eager's separate ops: one ulp of the dtype
        ulp = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(got, want, rtol=ulp, atol=ulp * want.abs().max().item())


def test_switched_off_by_the_environment(monkeypatch, fresh_probe):
    monkeypatch.setenv(compiled_pass.ENV, "0")
    assert compiled_pass.available() is False


def test_a_failing_compiler_means_not_offered_with_one_warning(monkeypatch, fresh_probe, caplog):
    def broken(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")
    monkeypatch.delenv(compiled_pass.ENV, raising=False)
    monkeypatch.setattr(compiled_pass, "_compiled", lambda: broken)
    with caplog.at_level(logging.WARNING, logger="glioseg.models.compiled_pass"):
        assert compiled_pass.available() is False
        assert compiled_pass.available() is False
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "No working C++ compiler found" in warnings[0] and "more lines" not in warnings[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_compiled_reductions_equal_the_batch_norm_sums(dtype):
    """Σ g·x, Σ g and Σ x², Σ x per (sample, channel) as fast_norm's batch-norm reductions give them,
    for voxel counts the chunk count divides, divides in part (6·5·4 = 120: 8 chunks) and not at all
    (3·5·7 = 105: one chunk)."""
    if not compiled_pass.available():
        pytest.skip("no working torch.compile (C++ compiler) on this machine")
    from glioseg.models.fast_norm import channel_sums
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}[dtype]
    for n, c, size in ((1, 16, (8, 8, 4)), (2, 12, (6, 5, 4)), (1, 8, (3, 5, 7))):
        g, _, x, _, _ = _tensors(dtype, n, c, size, seed=n + c)
        chunks = math.gcd(math.prod(size), compiled_pass.CHUNKS)
        assert compiled_pass.chunked(x).shape == (n, chunks, math.prod(size) // chunks, c)
        for got, want in ((compiled_pass.channel_sums_compiled(g, x), channel_sums(g, x)),
                          (compiled_pass.channel_sums_compiled(x, x), channel_sums(x, x))):
            for got_one, want_one in zip(got, want):
                assert got_one.shape == (n, c) and got_one.dtype == want_one.dtype
                # sums in another order: the accumulator's rounding, scaled by the sums' size
                torch.testing.assert_close(got_one, want_one, rtol=tolerance,
                                           atol=tolerance * want_one.abs().max().item())


@pytest.mark.parametrize("dtype, channels, depth, fold", [
    (torch.bfloat16, 16, 8, 2), (torch.bfloat16, 4, 8, 8), (torch.float32, 8, 6, 2),
    (torch.float32, 16, 8, 1), (torch.bfloat16, 32, 8, 1), (torch.bfloat16, 16, 5, 1)])
def test_narrow_rows_fold_into_one_vector_and_back(dtype, channels, depth, fold):
    """Folding fills a 64-byte row where the last axis divides, and is a view of the same memory
    whose channel j·C + c is channel c of voxel z·fold + j; unfolding gives the tensor back."""
    x = torch.randn(2, channels, 3, 4, depth).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    assert compiled_pass.fold_of(x) == fold
    wide = compiled_pass.folded(x, fold)
    assert wide.shape == (2, fold * channels, 3, 4, depth // fold) and wide.data_ptr() == x.data_ptr()
    assert wide.is_contiguous(memory_format=torch.channels_last_3d)
    j, c, z = fold - 1, channels - 1, depth // fold - 1
    assert torch.equal(wide[1, j * channels + c, 2, 3, z], x[1, c, 2, 3, z * fold + j])
    assert torch.equal(compiled_pass.unfolded(wide, fold), x)


@pytest.mark.parametrize("user_limit", [8, 64])
def test_a_call_raises_the_recompile_limit_only_while_it_runs(user_limit):
    config = torch._dynamo.config
    seen = []
    with config.patch(recompile_limit=user_limit):   # the user's setting (monkeypatch breaks a config module)
        out = compiled_pass._run(lambda t: seen.append((config.recompile_limit, torch.is_grad_enabled())) or t, 1)
        assert out == 1
        assert seen == [(max(user_limit, compiled_pass._RECOMPILE_LIMIT), False)]
        assert config.recompile_limit == user_limit
        with pytest.raises(ZeroDivisionError):     # and after a failing call too
            compiled_pass._run(lambda: 1 / 0)
        assert config.recompile_limit == user_limit
