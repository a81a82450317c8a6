"""glioseg.models.fast_norm: GroupNorm's maths on channels-last tensors, forward and backward."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glioseg.models import compiled_pass, fast_norm, kernel_choice, native_norm
from glioseg.models.cpu_kernels import accelerate_cpu
from glioseg.models.registry import create
from glioseg.training.losses import SegmentationLoss

# (batch, channels, groups, spatial size, affine)
SHAPES = [
    (1, 16, 8, (6, 5, 4), True),
    (2, 12, 3, (4, 5, 6), True),
    (1, 8, 8, (3, 4, 5), False),     # one channel per group: instance norm
    (3, 6, 1, (4, 3, 5), True),      # one group: layer norm over C and voxels
]


pytestmark = pytest.mark.usefixtures("measured_kernels")


def offered(apply, dtype=torch.float64):
    """Skip a form this machine does not offer for ``dtype`` (the compiled and native forms need a C++
    compiler; native is fp32 / bf16 only, tested in fp64's place against fp64 in test_native_norm)."""
    if apply not in fast_norm.applies(dtype):
        pytest.skip(f"GroupNorm form {apply!r} is not offered here for {dtype} (compiled_pass.available(): "
                    f"{compiled_pass.available()}, native_norm.available(): {native_norm.available()})")


def channels_last(shape, dtype=torch.float64, seed=0, offset=0.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + offset
    return x.to(dtype).contiguous(memory_format=torch.channels_last_3d)


def params(channels, affine, dtype=torch.float64, seed=1):
    if not affine:
        return None, None
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(channels, generator=generator, dtype=dtype).requires_grad_(),
            torch.randn(channels, generator=generator, dtype=dtype).requires_grad_())


@pytest.mark.parametrize("apply", fast_norm.APPLY)
@pytest.mark.parametrize("n, c, g, size, affine", SHAPES)
def test_gradcheck_in_double(apply, n, c, g, size, affine):
    offered(apply)
    x = channels_last((n, c, *size)).requires_grad_()
    w, b = params(c, affine)
    inputs = (x, w, b) if affine else (x,)

    def fn(x, w=None, b=None):
        return fast_norm.fast_group_norm(x, g, w, b, 1e-5, apply=apply)
    assert torch.autograd.gradcheck(fn, inputs)


def forward_backward(fn, x, w, b, grad):
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = fn(x, w, b)
    y.backward(grad)
    return y, x.grad, None if w is None else w.grad, None if b is None else b.grad


@pytest.mark.parametrize("apply", fast_norm.APPLY)
@pytest.mark.parametrize("n, c, g, size, affine", SHAPES)
def test_matches_torch_in_double(apply, n, c, g, size, affine):
    """Same values as F.group_norm to double rounding, input offset far from zero included."""
    offered(apply)
    x = channels_last((n, c, *size), offset=5.0)
    w, b = params(c, affine)
    grad = channels_last((n, c, *size), seed=7)
    ours = forward_backward(lambda x, w, b: fast_norm.fast_group_norm(x, g, w, b, apply=apply), x, w, b, grad)
    ref = forward_backward(lambda x, w, b: F.group_norm(x, g, w, b), x, w, b, grad)
    for got, want in zip(ours, ref):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def scaled_error(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("apply", fast_norm.APPLY)
def test_fp32_and_bf16_against_the_fp64_reference(dtype, tol, apply):
    """fp32 agrees to float rounding, bf16 within bf16's rounding (statistics summed in fp32)."""
    n, c, g, size = 1, 32, 8, (12, 10, 14)
    x64 = channels_last((n, c, *size), offset=1.0)
    w64, b64 = params(c, True)
    grad64 = channels_last((n, c, *size), seed=3)
    ref = forward_backward(lambda x, w, b: F.group_norm(x, g, w, b), x64, w64, b64, grad64)
    if apply not in fast_norm.applies(dtype):
        with pytest.raises(ValueError, match="apply must be one of"):
            fast_norm.fast_group_norm(x64.to(dtype), g, apply=apply)
        return
    ours = forward_backward(lambda x, w, b: fast_norm.fast_group_norm(x, g, w, b, apply=apply),
                            x64.to(dtype), w64.float(), b64.float(), grad64.to(dtype))
    assert ours[0].dtype == dtype and ours[1].dtype == dtype and ours[2].dtype == torch.float32
    assert ours[0].is_contiguous(memory_format=torch.channels_last_3d)
    for got, want in zip(ours, ref):
        assert scaled_error(got, want) < tol


@pytest.mark.parametrize("apply", fast_norm.APPLY)
def test_bf16_statistics_are_not_rounded_to_bf16(apply):
    """A large mean: bf16 sums would lose the variance, bf16 coefficients the gradient's
    cancellation; fp32 sums and coefficients keep both right."""
    offered(apply, torch.bfloat16)
    x = channels_last((1, 8, 16, 16, 16), offset=50.0)
    grad = channels_last((1, 8, 16, 16, 16), seed=3)
    ours = forward_backward(lambda x, w, b: fast_norm.fast_group_norm(x, 4, apply=apply),
                            x.to(torch.bfloat16), None, None, grad.to(torch.bfloat16))
    ref = forward_backward(lambda x, w, b: F.group_norm(x, 4), x.to(torch.bfloat16).double(), None, None, grad)
    assert scaled_error(ours[0], ref[0]) < 2e-2
    assert scaled_error(ours[1], ref[1]) < 2e-2


def test_channel_sums_are_per_sample():
    x = channels_last((3, 4, 5, 6, 7))
    g = channels_last((3, 4, 5, 6, 7), seed=2)
    dots, sums = fast_norm.channel_sums(g, x)
    torch.testing.assert_close(dots, (g * x).sum((2, 3, 4)))
    torch.testing.assert_close(sums, g.sum((2, 3, 4)))


def test_group_norm_falls_back_to_torch_off_the_fast_path(monkeypatch):
    """Inference, channels-first input or no gradient: F.group_norm itself, and nothing measured."""
    called = []
    monkeypatch.setattr(fast_norm, "fast_group_norm", lambda *a, **k: called.append(1))
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32)
    w, b = params(8, True, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fast_norm.group_norm(x, 4, w, b), F.group_norm(x, 4, w, b))
    first = x.contiguous().requires_grad_()
    torch.testing.assert_close(fast_norm.group_norm(first, 4, w, b), F.group_norm(first, 4, w, b))
    assert not called and not kernel_choice.decisions()


def test_the_measured_choice_is_used_and_remembered(monkeypatch):
    monkeypatch.setattr(kernel_choice, "measure",
                        lambda runs: {"torch": 3.0, "addcmul": 1.5, "matmul": 1.0, "affine": 2.0})
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32).requires_grad_()
    w, b = params(8, True, torch.float32)
    used = []
    real = fast_norm.fast_group_norm
    monkeypatch.setattr(fast_norm, "fast_group_norm",
                        lambda *a, apply, **k: used.append(apply) or real(*a, apply=apply, **k))
    fast_norm.group_norm(x, 4, w, b).sum().backward()
    assert used == ["matmul"]
    assert list(kernel_choice.decisions().values()) == ["matmul"]


def test_forced_torch_kernels(monkeypatch):
    monkeypatch.setenv(kernel_choice.ENV, "torch")
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: pytest.fail("measured although forced"))
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32).requires_grad_()
    monkeypatch.setattr(fast_norm, "fast_group_norm", lambda *a, **k: pytest.fail("fast path although forced"))
    fast_norm.group_norm(x, 4).sum().backward()


def test_no_compiler_probe_where_nothing_is_to_be_chosen(monkeypatch):
    """Forced torch kernels, or a resumed run's restored choice, need no compiler (a probe costs seconds)."""
    monkeypatch.setattr(fast_norm.compiled_pass, "available", lambda: pytest.fail("probed the compiler"))
    monkeypatch.setattr(fast_norm.native_norm, "available", lambda: pytest.fail("built the native library"))
    monkeypatch.setattr(kernel_choice, "measure", lambda runs: pytest.fail("measured"))
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32).requires_grad_()
    monkeypatch.setenv(kernel_choice.ENV, "torch")
    fast_norm.group_norm(x, 4).sum().backward()
    monkeypatch.delenv(kernel_choice.ENV)
    kernel_choice.restore({kernel_choice.key_of("group_norm", x, 4, False): "matmul"})
    used = []
    real = fast_norm.fast_group_norm
    monkeypatch.setattr(fast_norm, "fast_group_norm", lambda *a, apply, **k: used.append(apply) or real(*a, apply=apply, **k))
    fast_norm.group_norm(x, 4).sum().backward()
    assert used == ["matmul"]


def test_choosing_does_not_move_the_global_random_stream():
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32).requires_grad_()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fast_norm.group_norm(x, 4).sum().backward()
    assert kernel_choice.decisions()
    torch.testing.assert_close(torch.rand(3), expected)


def test_torch_kernels_forced_swaps_nothing(monkeypatch):
    monkeypatch.setenv(kernel_choice.ENV, "torch")
    model = accelerate_cpu(create("segresnet", init_filters=8))
    assert not any(type(m) is fast_norm.FastGroupNorm for m in model.modules())
    assert all(type(m) in (nn.Conv3d, nn.GroupNorm) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.GroupNorm)))


def test_accelerate_keeps_parameters_and_state_dict():
    torch.manual_seed(0)
    model = create("segresnet", init_filters=8)
    before = copy.deepcopy(model.state_dict())
    accelerate_cpu(model)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is fast_norm.FastGroupNorm for m in norms)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", ["segresnet", "dalight3d"])
def test_network_gradients_match_torch_kernels(name, monkeypatch):
    """A whole network's loss gradients with glioseg's GroupNorm (forced) equal torch's in fp32."""
    torch.manual_seed(0)
    options = {"init_filters": 8} if name == "segresnet" else {}
    plain = create(name, **options)
    fast = accelerate_cpu(copy.deepcopy(plain))
    plain.eval(), fast.eval()     # dropout off: the same function
    x = torch.randn(1, 4, 16, 16, 16)
    target = (torch.rand(1, 3, 16, 16, 16) > 0.7).float()
    loss = SegmentationLoss("dice")
    grads = []
    for model, kernels in ((plain, "torch"), (fast, "glioseg")):
        monkeypatch.setenv(kernel_choice.ENV, kernels)
        model.zero_grad()
        loss(model(x), target).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    scale = max(float(g.abs().max()) for g in grads[0].values())
    for key, want in grads[0].items():
        # parameters whose true gradient is 0 (a conv bias before a norm) hold rounding noise only
        assert float((grads[1][key] - want).abs().max()) <= 1e-3 * float(want.abs().max()) + 1e-6 * scale, key


@pytest.mark.parametrize("forced", [True, False])
def test_frozen_input_through_torch_kernels_gets_weight_gradients(monkeypatch, forced):
    """PyTorch's channels-last backward crashes where x needs no gradient; its kernel gets x contiguous."""
    if forced:
        monkeypatch.setenv(kernel_choice.ENV, "torch")
    else:
        monkeypatch.setattr(kernel_choice, "measure", lambda runs, *a, **k: {name: 0.0 if name == kernel_choice.TORCH
                                                                             else 1.0 for name in runs})
    x = channels_last((1, 8, 4, 4, 4), dtype=torch.float32)          # frozen: no gradient
    w, b = params(8, True, dtype=torch.float32)
    grad = channels_last((1, 8, 4, 4, 4), dtype=torch.float32, seed=3)
    got = torch.autograd.grad(fast_norm.group_norm(x, 4, w, b), (w, b), grad)
    want = torch.autograd.grad(F.group_norm(x.contiguous(), 4, w, b), (w, b), grad)
    torch.testing.assert_close(got, want)
