"""nnU-Net's intensity augmentations: off by default, fixed draws, their maths, probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from glioseg.data.augment import AugmentConfig, apply_plan, sample_plan
from glioseg.data.augment_intensity import (IntensityConfig, IntensityPlan, adjust_contrast, adjust_gamma,
                                            apply_intensity, sample_intensity, simulate_low_resolution)

ALL_ON = IntensityConfig(noise_prob=1.0, blur_prob=1.0, contrast_prob=1.0, lowres_prob=1.0, gamma_prob=1.0)


def _image(seed=0, shape=(4, 16, 18, 14)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _neutral(channels=4, **changes):
    values = dict(noise_std=0.0, noise_seed=0, blur_sigma=np.zeros(channels), contrast=np.ones(channels),
                  lowres=np.ones(channels), gamma=np.ones(channels))
    return IntensityPlan(**{**values, **changes})


def test_off_by_default_and_then_draws_nothing():
    """Configs without the block draw exactly what they drew before it existed."""
    assert not AugmentConfig().intensity.active
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    plan = sample_plan(AugmentConfig(), a, 4)
    sample_plan(AugmentConfig(intensity=IntensityConfig()), b, 4)
    assert plan.intensity is None and a.random() == b.random()


@pytest.mark.parametrize("config", [ALL_ON, IntensityConfig(gamma_prob=0.01), IntensityConfig(noise_prob=0.5)])
def test_an_active_block_draws_a_fixed_number_of_values(config):
    reference = np.random.default_rng(5)
    sample_intensity(ALL_ON, reference, 4)
    rng = np.random.default_rng(5)
    sample_intensity(config, rng, 4)
    assert rng.random() == reference.random()


def test_neutral_plan_leaves_the_image_unchanged():
    image = _image()
    assert np.array_equal(apply_intensity(_neutral(), image.copy()), image)


def test_each_transform_fires_at_its_probability():
    config = IntensityConfig(noise_prob=0.1, blur_prob=0.2, contrast_prob=0.15, lowres_prob=0.25, gamma_prob=0.3)
    rng = np.random.default_rng(0)
    plans = [sample_intensity(config, rng, 4) for _ in range(4000)]
    rates = {"noise": np.mean([p.noise_std > 0 for p in plans]),
             "blur": np.mean([p.blur_sigma > 0 for p in plans]),  # per channel: 0.2 x 0.5
             "contrast": np.mean([p.contrast[0] != 1 for p in plans]),
             "lowres": np.mean([p.lowres != 1 for p in plans]),  # per channel: 0.25 x 0.5
             "gamma": np.mean([p.gamma[0] != 1 for p in plans])}
    expected = {"noise": 0.1, "blur": 0.1, "contrast": 0.15, "lowres": 0.125, "gamma": 0.3}
    for name, rate in rates.items():
        assert rate == pytest.approx(expected[name], abs=0.025), name
    # contrast and gamma are drawn per channel but fire for the whole patch
    assert all(np.all(p.gamma != 1) or np.all(p.gamma == 1) for p in plans)
    gammas = np.concatenate([p.gamma[p.gamma != 1] for p in plans])
    assert gammas.min() >= 0.7 and gammas.max() <= 1.5


def test_gamma_equals_monai_adjust_contrast_with_retained_stats():
    monai_transforms = pytest.importorskip("monai.transforms")
    channel = _image()[0]
    for gamma in (0.7, 1.3):
        ours = adjust_gamma(channel, gamma)
        theirs = np.asarray(monai_transforms.AdjustContrast(gamma, retain_stats=True)(channel.copy()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
        # the channel's mean and sd are kept and the order of its voxels too
        assert ours.mean() == pytest.approx(channel.mean(), abs=1e-4) and ours.std() == pytest.approx(channel.std(), rel=1e-4)
        assert np.array_equal(np.argsort(ours, axis=None), np.argsort(channel, axis=None))


def test_contrast_scales_about_the_mean_within_the_channels_range():
    channel = _image()[1]
    low = adjust_contrast(channel, 0.8)
    np.testing.assert_allclose(low - channel.mean(), (channel - channel.mean()) * 0.8, rtol=1e-5, atol=1e-6)
    high = adjust_contrast(channel, 1.25)
    assert high.min() >= channel.min() and high.max() <= channel.max()
    assert high.std() > channel.std()


def test_low_resolution_keeps_shape_and_smooth_images_and_loses_fine_detail():
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (16, 18, 14)), indexing="ij")
    ramp = z + 2 * y - x
    out = simulate_low_resolution(ramp, 0.5)
    assert out.shape == ramp.shape
    assert np.abs(out - ramp).mean() < 1.5  # a ramp survives up to the block size
    checker = ((z + y + x) % 2).astype(np.float32)
    lost = simulate_low_resolution(checker, 0.5)
    assert np.abs(lost - checker).mean() > 0.3  # a one-voxel pattern does not
    assert np.array_equal(simulate_low_resolution(np.full((8, 8, 8), 2.5, np.float32), 0.6),
                          np.full((8, 8, 8), 2.5, np.float32))


def test_noise_has_the_drawn_sd_and_follows_its_seed():
    image = np.zeros((2, 32, 32, 32), np.float32)
    one = apply_intensity(_neutral(2, noise_std=0.3, noise_seed=7), image.copy())
    again = apply_intensity(_neutral(2, noise_std=0.3, noise_seed=7), image.copy())
    assert one.std() == pytest.approx(0.3, rel=0.02) and np.array_equal(one, again)


def test_blur_touches_only_the_chosen_channels_and_labels_never():
    image = _image()
    label = np.random.default_rng(1).choice(np.array([0, 1, 2, 4], np.uint8), size=image.shape[1:])
    config = AugmentConfig(flip_prob=(0, 0, 0), intensity_prob=0.0, intensity=ALL_ON)
    plan = sample_plan(config, np.random.default_rng(2), 4)
    plan = type(plan)(plan.flips, None, plan.scale, plan.shift,
                      _neutral(blur_sigma=np.array([0.0, 1.0, 0.0, 0.7])))
    out, out_label = apply_plan(plan, image, label, image.shape[1:])
    assert np.array_equal(out[[0, 2]], image[[0, 2]]) and not np.allclose(out[[1, 3]], image[[1, 3]])
    assert out[1].std() < image[1].std()
    assert np.array_equal(out_label, label)


@pytest.mark.parametrize("values, message", [
    ({"intensity": {"gamma_range": [1.5, 0.7]}}, "intensity.gamma_range must be two values low <= high"),
    ({"intensity": {"noise_prob": 1.5}}, "intensity.noise_prob must lie in [0, 1]"),
    ({"intensity": {"lowres_range": [0.0, 1.0]}}, "intensity.lowres_range"),
    ({"intensity": {"gama_prob": 0.3}}, "unknown key(s) gama_prob"),
])
def test_config_errors_name_the_setting(values, message):
    with pytest.raises(ValueError) as err:
        AugmentConfig.from_dict(values)
    assert message in str(err.value)
