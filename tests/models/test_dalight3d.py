"""DALight-3D specifics: identifiers, the spec's structure, CSA and SSFB against naive references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ._helpers import build_tiny, inputs
from glioseg.models import create
from glioseg.models.blocks import SSFB, CrossSliceAttention, IdNorm, SepConv, SimpleSkip


def randomised(model):
    """Give every IdNorm distinct per-id and default affines, as training would."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, IdNorm):
            for p in (m.gamma.weight, m.beta.weight, m.default_gamma, m.default_beta):
                p.data = torch.rand(p.shape, generator=g) + 0.5
    return model.eval()


@torch.no_grad()
def test_unknown_ids_use_the_default_affine():
    model = randomised(build_tiny("dalight3d"))
    x = inputs((1, 4, 16, 16, 16))
    default = model(x)
    for unknown in (-1, 8, 100):
        torch.testing.assert_close(model(x, torch.tensor([unknown])), default, rtol=0, atol=1e-6)
    assert not torch.allclose(model(x, torch.tensor([0])), default, atol=1e-3)
    assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([1])), atol=1e-3)


@torch.no_grad()
def test_a_batch_can_mix_known_and_unknown_ids():
    model = randomised(build_tiny("dalight3d"))
    x = inputs((3, 4, 16, 16, 16))
    batch = model(x, torch.tensor([2, -1, 7]))
    torch.testing.assert_close(batch[0:1], model(x[0:1], torch.tensor([2])), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[1:2], model(x[1:2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[2:3], model(x[2:3], torch.tensor([7])), rtol=1e-5, atol=1e-5)


def test_ids_of_the_wrong_shape_are_rejected():
    model = build_tiny("dalight3d")
    with pytest.raises(ValueError, match=r"ids must have shape \(2,\), got \(3,\)"):
        model(inputs((2, 4, 16, 16, 16)), torch.tensor([0, 1, 2]))


def test_no_idnorm_ignores_ids():
    model = build_tiny("dalight3d-no-idnorm").eval()
    x = inputs((1, 4, 16, 16, 16))
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([3])), model(x))


def test_structure_follows_the_spec():
    model = build_tiny("dalight3d")
    assert not isinstance(model.enc0.conv1, SepConv)
    assert all(isinstance(b.conv1, SepConv) for b in (model.enc1, model.enc2, model.enc3, model.dec1))
    assert [isinstance(b.csa, CrossSliceAttention) for b in (model.enc0, model.enc1, model.enc2, model.enc3)] \
        == [False, False, True, True]
    assert isinstance(model.skip3, SimpleSkip) and isinstance(model.skip2, SSFB) and isinstance(model.skip1, SSFB)
    assert model.skip1.alpha.item() == 0.5
    assert isinstance(build_tiny("dalight3d-no-ssfb").skip1, SimpleSkip)
    assert not isinstance(build_tiny("dalight3d-no-sepconv").dec1.conv1, SepConv)


def naive_csa(csa: CrossSliceAttention, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Slice by slice: descriptor, query/key/value, softmax over slices, broadcast back."""
    xs = x.movedim(2 + axis, 2)                                     # slices along dim 2
    s = xs.mean(dim=(3, 4))                                         # (B, C, D)
    q, k, v = (torch.einsum("oc,bcd->bod", m.weight[..., 0], s) + m.bias[:, None]
               for m in (csa.query, csa.key, csa.value))
    out = torch.zeros_like(v)
    for i in range(s.shape[2]):
        a = torch.softmax(torch.einsum("bo,bod->bd", q[..., i], k) / q.shape[1] ** 0.5, dim=1)
        out[..., i] = torch.einsum("bd,bcd->bc", a, v)
    return (xs + out[..., None, None]).movedim(2, 2 + axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@torch.no_grad()
def test_csa_matches_slice_by_slice_reference(axis):
    csa = CrossSliceAttention(16, axis)
    x = inputs((2, 16, 6, 7, 5))
    torch.testing.assert_close(csa(x), naive_csa(csa, x, axis), rtol=1e-5, atol=1e-5)


def naive_ssfb_attention(m: SSFB, enc, dec):
    """The spec's formula on (B, C, N) matrices."""
    q = F.conv3d(dec, m.query.weight, m.query.bias).flatten(2).softmax(dim=2)   # over tokens
    k = F.conv3d(enc, m.key.weight, m.key.bias).flatten(2).softmax(dim=1)       # over rank
    v = F.conv3d(enc, m.value.weight, m.value.bias).flatten(2)
    context = k @ v.transpose(1, 2)                                             # (B, r, C)
    att = (q.transpose(1, 2) @ context).transpose(1, 2).reshape(enc.shape)
    return F.conv3d(att, m.out.weight, m.out.bias)


@pytest.mark.parametrize("channels_last", [False, True])
@torch.no_grad()
def test_ssfb_attention_matches_the_spec_formula(channels_last):
    m = SSFB(16, rank=8)
    enc, dec = inputs((2, 16, 6, 4, 5), seed=1), inputs((2, 16, 6, 4, 5), seed=2)
    if channels_last:
        enc, dec = (t.contiguous(memory_format=torch.channels_last_3d) for t in (enc, dec))
    torch.testing.assert_close(m.attention(enc, dec), naive_ssfb_attention(m, enc, dec), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_ssfb_blend_and_gate():
    m = SSFB(16, rank=8)
    enc, dec = inputs((1, 16, 4, 4, 4), seed=1), inputs((1, 16, 4, 4, 4), seed=2)
    gate = m.gate(torch.cat([dec.mean(dim=(2, 3, 4)), enc.mean(dim=(2, 3, 4))], dim=1))[..., None, None, None]
    w = torch.sigmoid(m.alpha)
    blend = w * naive_ssfb_attention(m, enc, dec) + (1 - w) * enc * gate
    torch.testing.assert_close(m(enc, dec), m.fuse(torch.cat([dec, blend], dim=1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,message", [
    ({"base_width": 12}, "multiples of 8"),
    ({"csa_axis": 3}, "csa_axis must be 0, 1 or 2"),
    ({"dropout": 1.0}, "0 <= dropout < 1"),
])
def test_bad_configurations_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        create("dalight3d", **options)
