"""glioseg.models.cpu_conv: the same convolution as nn.Conv3d, forward and backward, on oneDNN."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glioseg.models import cpu_conv
from glioseg.models.fast_conv import DepthwiseConv3d, PointwiseConv3d
from glioseg.models.registry import create
from glioseg.training.losses import SegmentationLoss

RTOL = 1e-4

# (c_in, c_out, kernel, stride, padding, bias, batch, spatial size)
SHAPES = [
    (4, 8, 3, 1, 1, True, 1, (12, 13, 14)),
    (6, 10, 3, 2, 1, False, 2, (13, 12, 11)),
    (5, 7, 3, 2, 1, True, 1, (16, 16, 16)),
    (3, 4, 5, 1, 2, True, 1, (9, 10, 11)),
    (4, 6, 3, 1, 0, False, 1, (10, 9, 8)),
    (4, 6, 2, 2, 0, True, 1, (10, 10, 10)),
    (8, 8, 3, 3, 1, False, 3, (11, 12, 10)),
    (16, 16, 3, 1, 1, True, 1, (8, 8, 8)),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of the reference."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def pair(c_in, c_out, k, s, p, bias, seed=0):
    torch.manual_seed(seed)
    plain = nn.Conv3d(c_in, c_out, k, s, p, bias=bias)
    fast = cpu_conv.accelerate_cpu_convs(copy.deepcopy(plain))
    return plain, fast


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s[:7])))
def test_forward_and_gradients_match_nn_conv3d(shape, channels_last):
    c_in, c_out, k, s, p, bias, n, size = shape
    plain, fast = pair(c_in, c_out, k, s, p, bias)
    assert type(fast) is cpu_conv.CpuConv3d
    x = torch.randn(n, c_in, *size, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_fast = plain(x_plain), fast(x_fast)
    assert y_fast.shape == y_plain.shape and rel(y_fast, y_plain) < RTOL
    grad = torch.randn(y_plain.shape, generator=torch.Generator().manual_seed(2))
    y_plain.backward(grad)
    y_fast.backward(grad)
    assert rel(x_fast.grad, x_plain.grad) < RTOL
    assert rel(fast.weight.grad, plain.weight.grad) < RTOL
    if bias:
        assert rel(fast.bias.grad, plain.bias.grad) < RTOL


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s[:7])))
def test_both_weight_gradient_forms_and_the_input_gradient(shape):
    """Each kernel checked directly, whichever one the size rule would pick."""
    c_in, c_out, k, s, p, _, n, size = shape
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, c_in, *size, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c_out, c_in, k, k, k, generator=gen)
    g = torch.randn(F.conv3d(x, w, None, s, p).shape, generator=gen)
    stride, padding = (s,) * 3, (p,) * 3
    ref_w = torch.nn.grad.conv3d_weight(x, w.shape, g, s, p)
    assert rel(cpu_conv.swapped_weight_grad(x, g, w.shape[2:], stride, padding), ref_w) < RTOL
    assert rel(cpu_conv.aten_weight_grad(x, g, w, stride, padding), ref_w) < RTOL
    ref_x = torch.nn.grad.conv3d_input(x.shape, w, g, s, p)
    assert rel(cpu_conv.input_grad(g, w, x.shape, stride, padding), ref_x) < RTOL


def test_input_gradient_without_onednn_transposed_op(monkeypatch):
    """A build without mkldnn::_convolution_transpose_pointwise falls back to aten for stride > 1."""
    monkeypatch.setattr(cpu_conv, "_TRANSPOSED", None)
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(1, 4, 9, 10, 11, generator=gen), torch.randn(6, 4, 3, 3, 3, generator=gen)
    g = torch.randn(F.conv3d(x, w, None, 2, 1).shape, generator=gen)
    out = cpu_conv.input_grad(g, w, x.shape, (2, 2, 2), (1, 1, 1))
    assert rel(out, torch.nn.grad.conv3d_input(x.shape, w, g, 2, 1)) < RTOL


def test_weight_gradient_rule():
    """Swapped form: stride 1 at up to 32³ voxels or where aten would run slow_conv3d; never stride 2."""
    assert cpu_conv.swap_weight_grad_pays((1, 64, 16, 16, 16), (3, 3, 3), (1, 1, 1))
    assert cpu_conv.swap_weight_grad_pays((1, 4, 64, 64, 64), (3, 3, 3), (1, 1, 1))      # slow_conv3d
    assert not cpu_conv.swap_weight_grad_pays((1, 16, 64, 64, 64), (3, 3, 3), (1, 1, 1))
    assert not cpu_conv.swap_weight_grad_pays((1, 64, 16, 16, 16), (3, 3, 3), (2, 2, 2))
    assert not cpu_conv.aten_uses_mkldnn((1, 128, 8, 8, 8), (3, 3, 3))
    assert cpu_conv.aten_uses_mkldnn((2, 128, 8, 8, 8), (3, 3, 3))


def test_which_modules_are_switched_and_state_dict_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(4, 8, 3, padding=1),                       # dense -> CpuConv3d
        nn.Conv3d(8, 8, 3, padding=1, groups=8),             # depthwise: left alone
        DepthwiseConv3d(8),                                  # fast_conv's own: left alone
        nn.Conv3d(8, 8, 1),                                  # pointwise -> PointwiseConv3d
        nn.Conv3d(8, 8, 1, stride=2),                        # strided 1x1 -> CpuConv3d
        nn.Conv3d(8, 8, 3, padding=1, dilation=2),           # dilated: left alone
        nn.Conv3d(8, 8, 3, padding="same"),                  # string padding: left alone
        nn.Conv3d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.ConvTranspose3d(8, 8, 2, stride=2),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_conv.accelerate_cpu_convs(model)
    kinds = [type(m) for m in model]
    assert kinds == [cpu_conv.CpuConv3d, nn.Conv3d, DepthwiseConv3d, PointwiseConv3d, cpu_conv.CpuConv3d,
                     nn.Conv3d, nn.Conv3d, nn.Conv3d, nn.ConvTranspose3d]
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert cpu_conv.accelerate_cpu_convs(model) is model and [type(m) for m in model] == kinds
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone[0]) is cpu_conv.CpuConv3d


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning", "ignore:TF32 acceleration:UserWarning")
def test_autocast_tracing_and_disabled_onednn_run_the_plain_convolution():
    plain, fast = pair(3, 4, 3, 1, 1, True)
    x = torch.randn(1, 3, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.bfloat16
    traced = torch.jit.trace(fast, x)
    assert "mkldnn_convolution" not in str(traced.graph)
    assert rel(traced(x), plain(x)) < RTOL
    with torch.no_grad():
        assert rel(fast(x), plain(x)) < RTOL
    with torch.backends.mkldnn.flags(enabled=False), torch.profiler.profile() as prof:
        fast(x)
    assert not any("mkldnn" in e.key for e in prof.key_averages())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_op_on_cuda():
    model = nn.Sequential(nn.Conv3d(2, 2, 3)).cuda()
    assert type(cpu_conv.accelerate_cpu_convs(model)[0]) is nn.Conv3d


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    loss = SegmentationLoss("dice")(model(x), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.double().flatten() for p in model.parameters()])


def test_segresnet_training_step_agrees():
    """Whole-network gradients differ from a float64 reference by ~4e-4 already with aten's fp32
    kernels (GroupNorm after GroupNorm amplifies rounding), so the oneDNN path must be as close to
    float64 as aten's is; the loss and one SGD update must agree with aten's to float rounding."""
    torch.manual_seed(0)
    plain = create("segresnet", init_filters=8, dropout=0.0).train()
    fast = cpu_conv.accelerate_cpu_convs(copy.deepcopy(plain))
    exact = copy.deepcopy(plain).double()
    assert sum(type(m) is cpu_conv.CpuConv3d for m in fast.modules()) == 28      # every 3x3x3 conv
    assert sum(type(m) is PointwiseConv3d for m in fast.modules()) == 4          # 1x1x1: up path, head
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 24, 24, 24, generator=gen)
    y = (torch.rand(1, 3, 24, 24, 24, generator=gen) > 0.7).float()
    loss_p, grad_p = _gradients(plain, x, y)
    loss_f, grad_f = _gradients(fast, x, y)
    _, grad_64 = _gradients(exact, x.double(), y.double())
    assert abs(loss_f - loss_p) <= 1e-5 * abs(loss_p)
    error = lambda g: float((g - grad_64).norm() / grad_64.norm())  # noqa: E731
    assert error(grad_f) <= max(RTOL, 2 * error(grad_p)), (error(grad_f), error(grad_p))
    for model in (plain, fast):
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    weights = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (plain, fast)]
    assert rel(weights[1], weights[0]) < RTOL


def test_layers_that_aten_runs_on_onednn_keep_atens_own_kernels(monkeypatch):
    """glioseg's autograd function serves the convs aten would send to slow_conv3d, and the
    lane-misaligned stride-1 ones; aligned layers that aten runs on oneDNN keep aten's kernels."""
    calls = []
    real = cpu_conv._Conv3dFn.apply
    monkeypatch.setattr(cpu_conv._Conv3dFn, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(cpu_conv, "LANES", 8)
    conv = cpu_conv.accelerate_cpu_convs(nn.Conv3d(24, 8, 3, padding=1))
    big = torch.randn(1, 24, 32, 32, 8).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    small = torch.randn(1, 24, 16, 16, 8, requires_grad=True)    # N·C·D·H 6,144: aten's slow_conv3d
    assert cpu_conv.aten_uses_mkldnn(big.shape, (3, 3, 3))       # 24,576 > 20,480: oneDNN in aten
    assert not cpu_conv.aten_uses_mkldnn(small.shape, (3, 3, 3))
    conv(big).sum().backward()
    conv(small).sum().backward()
    assert calls == [small.shape]
    monkeypatch.setattr(cpu_conv, "LANES", 16)                   # 24 and 8 are no longer whole vectors
    conv(big).sum().backward()
    assert calls == [small.shape, big.shape]
    conv(big.detach().contiguous().requires_grad_()).sum().backward()  # channels-first keeps aten's kernels
    strided = cpu_conv.accelerate_cpu_convs(nn.Conv3d(24, 8, 3, stride=2, padding=1))
    strided(big).sum().backward()                                # and so does stride 2
    assert calls == [small.shape, big.shape]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "channels-first"])
@pytest.mark.parametrize("c_in,c_out,bias", [(24, 24, False), (4, 24, True), (24, 64, False), (32, 32, True)])
def test_lane_padded_convolutions_match_nn_conv3d(monkeypatch, channels_last, c_in, c_out, bias):
    """Zero filters padding the widths to whole vectors change nothing but the time."""
    monkeypatch.setattr(cpu_conv, "LANES", 16)
    plain, fast = pair(c_in, c_out, 3, 1, 1, bias)
    calls = []
    real = cpu_conv._Conv3dFn.apply
    monkeypatch.setattr(cpu_conv._Conv3dFn, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(1, c_in, 32, 32, 8, generator=torch.Generator().manual_seed(6)).contiguous(memory_format=layout)
    x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_fast = plain(x_plain), fast(x_fast)
    assert y_fast.shape == y_plain.shape and y_fast.is_contiguous(memory_format=layout)
    assert rel(y_fast, y_plain) < RTOL
    grad = torch.randn(y_plain.shape, generator=torch.Generator().manual_seed(7))
    y_plain.backward(grad)
    y_fast.backward(grad)
    assert x_fast.grad.shape == x.shape and rel(x_fast.grad, x_plain.grad) < RTOL
    assert rel(fast.weight.grad, plain.weight.grad) < RTOL
    ours = (channels_last and cpu_conv.misaligned(c_in, c_out)) or not cpu_conv.aten_uses_mkldnn(x.shape, (3, 3, 3))
    assert len(calls) == int(ours)
    with torch.no_grad():
        assert rel(fast(x), plain(x)) < RTOL
