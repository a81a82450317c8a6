"""The fast depthwise/pointwise convs give the plain layers' results and gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ._helpers import inputs
from glioseg.models import kernel_choice
from glioseg.models.fast_conv import DepthwiseConv3d, PointwiseConv3d, _DepthwiseConv3dFn

LAYOUTS = [torch.contiguous_format, torch.channels_last_3d]


@pytest.fixture
def glioseg_kernels(monkeypatch):
    """The fast kernels whatever this machine would measure (the choice is kernel_choice's test)."""
    monkeypatch.setenv(kernel_choice.ENV, "glioseg")


def test_depthwise_backward_passes_gradcheck():
    x = inputs((2, 3, 4, 5, 3)).double().requires_grad_()
    w = inputs((3, 1, 3, 3, 3), seed=1).double().requires_grad_()
    assert torch.autograd.gradcheck(_DepthwiseConv3dFn.apply, (x, w))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_matches_nn_conv3d(layout, glioseg_kernels):
    fast, plain = DepthwiseConv3d(6), nn.Conv3d(6, 6, 3, padding=1, groups=6, bias=False)
    plain.load_state_dict(fast.state_dict())
    x = inputs((2, 6, 8, 10, 12)).contiguous(memory_format=layout)
    grads, outs = [], []
    for layer in (fast, plain):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        (y * inputs(y.shape, seed=2)).sum().backward()
        outs.append(y)
        grads.append((xi.grad, layer.weight.grad))
    assert outs[0].grad_fn.name() == "_DepthwiseConv3dFnBackward"    # the fast path was taken
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


def test_depthwise_under_bf16_autocast_matches_aten(glioseg_kernels):
    """bf16 autocast: the fast path computes in bf16 as aten would, weight gradient in fp32."""
    fast, plain = DepthwiseConv3d(8), nn.Conv3d(8, 8, 3, padding=1, groups=8, bias=False)
    plain.load_state_dict(fast.state_dict())
    x = inputs((1, 8, 10, 9, 8)).contiguous(memory_format=torch.channels_last_3d)
    results = []
    for layer in (fast, plain):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        (y.float() * inputs(y.shape, seed=2)).sum().backward()
        results.append((y, xi.grad, layer.weight.grad))
    assert results[0][0].grad_fn.name() != "ConvolutionBackward0" and results[0][0].dtype == torch.bfloat16
    assert results[0][2].dtype == torch.float32
    for got, want in zip(results[0], results[1]):
        assert float((got.float() - want.float()).abs().max() / want.float().abs().max()) < 2e-2


def test_depthwise_follows_the_measured_choice(monkeypatch, measured_kernels):
    layer, x = DepthwiseConv3d(4), inputs((1, 4, 6, 6, 6)).requires_grad_()
    for winner, expected in (("torch", "ConvolutionBackward0"), ("glioseg", "_DepthwiseConv3dFnBackward")):
        kernel_choice.forget()
        monkeypatch.setattr(kernel_choice, "measure", lambda runs, w=winner: {n: (0.1 if n == w else 1.0) for n in runs})
        assert layer(x).grad_fn.name() == expected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_depthwise_uses_aten_where_the_fast_path_does_not_apply(glioseg_kernels):
    layer, x = DepthwiseConv3d(4), inputs((1, 4, 6, 6, 6)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        assert layer(x).grad_fn.name() == "ConvolutionBackward0"
    assert layer(x).grad_fn.name() == "_DepthwiseConv3dFnBackward"
    with torch.no_grad():
        assert layer(x).grad_fn is None
    traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_matches_nn_conv3d(layout, bias):
    fast, plain = PointwiseConv3d(6, 5, bias=bias), nn.Conv3d(6, 5, 1, bias=bias)
    plain.load_state_dict(fast.state_dict())
    x = inputs((2, 6, 4, 5, 3)).contiguous(memory_format=layout).requires_grad_()
    y_fast, y_plain = fast(x), plain(x)
    torch.testing.assert_close(y_fast, y_plain)
    assert y_fast.is_contiguous(memory_format=layout)
    g_fast = torch.autograd.grad(y_fast.sum(), [x, fast.weight])
    g_plain = torch.autograd.grad(y_plain.sum(), [x, plain.weight])
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
