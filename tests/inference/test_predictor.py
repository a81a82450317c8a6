"""The window engine: sliding windows, flips, ensembles, fp32 re-runs and the out-of-memory ladder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glioseg.inference.predictor import FLIPS, PredictConfig, Predictor, RunStats, window_logits, window_size
from ._fakes import FakeNetwork, make_bundle, threshold_logits


def _image(shape=(4, 30, 26, 22), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _symmetric_conv() -> torch.nn.Conv3d:
    """A 3x3x3 conv whose kernels are symmetric under every axis flip: a flip-equivariant model."""
    conv = torch.nn.Conv3d(4, 3, 3, padding=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(3, 4, 3, 3, 3, generator=generator)
        for dim in (2, 3, 4):
            w = w + w.flip(dim)
        conv.weight.copy_(w / 8)
    return conv.eval()


def test_flips_are_the_eight_axis_combinations():
    assert len(FLIPS) == 8 == len(set(FLIPS))
    assert () in FLIPS and (2, 3, 4) in FLIPS


@pytest.mark.parametrize("window,overlap", [("box", 0.5), ("patch", 0.5), ((8, 16, 8), 0.25), ((24, 8, 16), 0.6)])
def test_sliding_window_equals_whole_volume_for_a_pointwise_model(window, overlap):
    image = _image()
    net = FakeNetwork(threshold_logits)
    config = PredictConfig(window=window, overlap=overlap)
    stats = RunStats()
    got = window_logits(net, torch.from_numpy(image)[None], config, None, stats)
    want = threshold_logits(torch.from_numpy(image)[None])
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert stats.windows == len(net.calls) >= (1 if window == "box" else 2)


def test_window_never_exceeds_the_box_and_respects_the_divisor():
    net = FakeNetwork(threshold_logits, make_bundle(patch=(64, 64, 64)), size_divisor=8)
    assert window_size(PredictConfig(window="box"), net, (30, 41, 8)) == (32, 48, 8)
    assert window_size(PredictConfig(window="patch"), net, (100, 41, 8)) == (64, 48, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        window_size(PredictConfig(window=(20, 16, 16)), net, (100, 100, 100))


def test_config_rejects_bad_values():
    for bad in (dict(window="whole"), dict(window=(1, 2)), dict(overlap=1.0), dict(precision="fp8"),
                dict(sw_batch_size=0)):
        with pytest.raises(ValueError):
            PredictConfig(**bad)


def test_tta_of_a_flip_equivariant_model_equals_no_tta():
    conv = _symmetric_conv()
    net = FakeNetwork(lambda x: conv(x))
    image = _image()
    plain, _ = Predictor([net], PredictConfig()).probabilities(image)
    flipped, stats = Predictor([net], PredictConfig(tta=True)).probabilities(image)
    assert stats.windows == 8
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    # A model that is not flip-equivariant does change: TTA really flips and un-flips.
    skew = torch.nn.Conv3d(4, 3, 3, padding=1).eval()
    other = FakeNetwork(lambda x: skew(x))
    a, _ = Predictor([other], PredictConfig()).probabilities(image)
    b, _ = Predictor([other], PredictConfig(tta=True)).probabilities(image)
    assert np.abs(a - b).max() > 1e-3


def test_flips_follow_the_models_default_unless_asked():
    # a released model chosen on flipped probabilities flips by default; --tta / --no-tta decide
    image = _image()
    skew = torch.nn.Conv3d(4, 3, 3, padding=1).eval()
    flipping = FakeNetwork(lambda x: skew(x), make_bundle(tta=True))
    default, stats = Predictor([flipping], PredictConfig()).probabilities(image)
    assert stats.windows == 8 and Predictor([flipping], PredictConfig()).config.tta is True
    asked, _ = Predictor([FakeNetwork(lambda x: skew(x))], PredictConfig(tta=True)).probabilities(image)
    np.testing.assert_allclose(default, asked, atol=1e-6)
    _, stats = Predictor([flipping], PredictConfig(tta=False)).probabilities(image)
    assert stats.windows == 1
    assert Predictor([FakeNetwork(threshold_logits)], PredictConfig()).config.tta is False  # a checkpoint: no flips
    with pytest.raises(ValueError, match="flip default"):
        Predictor([flipping, FakeNetwork(threshold_logits)], PredictConfig())
    with pytest.raises(ValueError, match="bundle.tta"):
        make_bundle(tta="yes")


def test_ensemble_averages_probabilities():
    image = _image()
    first = FakeNetwork(lambda x: x[:, :3] * 2)
    second = FakeNetwork(lambda x: -x[:, 1:] + 0.5)
    got, stats = Predictor([first, second], PredictConfig()).probabilities(image)
    x = torch.from_numpy(image)
    want = (torch.sigmoid(x[:3] * 2) + torch.sigmoid(-x[1:] + 0.5)) / 2
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert stats.windows == 2


def test_ensemble_members_must_agree():
    a = FakeNetwork(threshold_logits)
    b = FakeNetwork(threshold_logits, make_bundle(channels=("t1", "flair", "t1ce", "t2")))
    with pytest.raises(ValueError, match="differ in channels"):
        Predictor([a, b], PredictConfig())


def test_non_finite_windows_are_rerun_in_fp32():
    conv = _symmetric_conv()

    def nan_under_autocast(x):
        out = conv(x)
        if torch.is_autocast_enabled("cpu"):
            out = out.clone()
            out[0, 0, 0, 0, 0] = float("nan")
        return out

    image = _image((4, 16, 16, 16))
    reference, _ = Predictor([FakeNetwork(lambda x: conv(x))], PredictConfig()).probabilities(image)
    got, stats = Predictor([FakeNetwork(nan_under_autocast)], PredictConfig(precision="bf16")).probabilities(image)
    assert stats.fp32_reruns == 1
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert np.isfinite(got).all()


def test_non_finite_in_fp32_is_an_error():
    net = FakeNetwork(lambda x: x[:, :3] * float("inf"))
    with pytest.raises(ValueError, match="non-finite outputs even in fp32"):
        Predictor([net], PredictConfig()).probabilities(_image((4, 8, 8, 8)))


def test_bf16_on_a_tiny_tensor_is_close_to_fp32():
    conv = _symmetric_conv()
    image = _image((4, 8, 8, 8))
    a, _ = Predictor([FakeNetwork(lambda x: conv(x))], PredictConfig()).probabilities(image)
    b, stats = Predictor([FakeNetwork(lambda x: conv(x))], PredictConfig(precision="bf16")).probabilities(image)
    assert b.dtype == np.float32 and stats.fp32_reruns == 0
    np.testing.assert_allclose(a, b, atol=2e-2)


def test_out_of_memory_retries_with_smaller_windows():
    def limited(x):
        if x.shape[0] > 1 or max(x.shape[2:]) > 16:
            raise torch.OutOfMemoryError("fake: window too large")
        return threshold_logits(x)

    image = _image()
    net = FakeNetwork(limited, make_bundle(patch=(16, 16, 16)))
    got, stats = Predictor([net], PredictConfig(window="box", sw_batch_size=4)).probabilities(image)
    want = torch.sigmoid(threshold_logits(torch.from_numpy(image)[None]))[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert stats.oom_retries == 2 and stats.window_size == [16, 16, 16] and stats.sw_batch_size == 1


def test_out_of_memory_everywhere_gives_a_clear_error():
    def never(x):
        raise torch.OutOfMemoryError("fake")

    pattern = r"out of memory on cpu at precision fp32 .*window \[30, 26, 22\] x batch 2.*--roi 8 8 8"
    with pytest.raises(ValueError, match=pattern):
        Predictor([FakeNetwork(never)], PredictConfig(sw_batch_size=2)).probabilities(_image())


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    def broken(x):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Predictor([FakeNetwork(broken)], PredictConfig()).probabilities(_image((4, 8, 8, 8)))


def test_site_ids_come_from_the_bundle():
    net = FakeNetwork(threshold_logits, make_bundle(site_index={"TCIA01": 3}))
    Predictor([net], PredictConfig()).probabilities(_image((4, 8, 8, 8)), site="TCIA01")
    Predictor([net], PredictConfig()).probabilities(_image((4, 8, 8, 8)), site="CBICA")
    assert [site for _, site in net.calls] == [3, None]


def test_torch_network_runs_the_cpu_kernels_with_the_plain_models_logits():
    from glioseg.inference.predictor import TorchNetwork
    from glioseg.models.cpu_conv import CpuConv3d
    from ._fakes import tiny_bundle

    bundle = tiny_bundle()
    network = TorchNetwork(bundle, "cpu")
    assert any(type(m) is CpuConv3d for m in network.model.modules())
    x = torch.from_numpy(_image((1, 4, 16, 16, 16)))
    with torch.no_grad():
        assert torch.allclose(network(x, None), bundle.build_model("cpu")(x), atol=1e-5, rtol=1e-4)


def _context_logits(x: torch.Tensor) -> torch.Tensor:
    """Logits that depend on the whole window, as GroupNorm makes them: each channel minus its window mean."""
    return x[:, :3] - x[:, :3].mean(dim=(2, 3, 4), keepdim=True)


def test_volume_window_sees_the_whole_uncropped_volume():
    image = _image((4, 6, 5, 4))
    box, shape = [[2, 8], [1, 6], [3, 7]], (10, 9, 8)
    meta = {"crop": {"box": box}, "ras": {"shape": list(shape)}}
    net = FakeNetwork(_context_logits)
    got, stats = Predictor([net], PredictConfig(window="volume")).case_probabilities(image, meta)
    full = torch.zeros((1, 4, *shape))
    full[:, :, 2:8, 1:6, 3:7] = torch.from_numpy(image)
    want = torch.sigmoid(_context_logits(full))[0, :, 2:8, 1:6, 3:7].numpy()
    assert net.calls == [((1, 4, *shape), None)] and stats.window_size == list(shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    boxed, _ = Predictor([net], PredictConfig(window="box")).case_probabilities(image, meta)
    assert boxed.shape == got.shape and not np.allclose(boxed, got, atol=1e-3)
