"""Augmentation plans: recipe ranges, exact geometry of flips / rotations, nearest labels, configs."""
from __future__ import annotations

import numpy as np
import pytest

from glioseg.data.augment import AugmentConfig, AugmentPlan, apply_plan, read_shape, sample_plan
from glioseg.data.sampling import read_region

PATCH = (12, 12, 12)


def _volume(seed=0, shape=(20, 22, 18)):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((4, *shape)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape)
    return image, label


def _plan(flips=(False, False, False), matrix=None, channels=4):
    return AugmentPlan(flips, matrix, np.ones(channels, np.float32), np.zeros(channels, np.float32))


def _region(plan, image, label, start=(4, 5, 3)):
    size = read_shape(plan, PATCH)
    origin = [s - (r - p) // 2 for s, r, p in zip(start, size, PATCH)]
    return read_region(image, origin, size), read_region(label, origin, size)


def test_default_matches_the_segresnet_recipe():
    config = AugmentConfig()
    assert config.flip_prob == (0.5, 0.5, 0.5)
    assert (config.intensity_scale, config.intensity_shift, config.intensity_prob) == (0.1, 0.1, 1.0)
    assert config.rotate_prob == 0.0 and config.zoom_prob == 0.0


def test_intensity_scale_and_shift_stay_in_range_one_value_for_all_channels():
    rng = np.random.default_rng(0)
    plans = [sample_plan(AugmentConfig(), rng, 4) for _ in range(300)]
    scales = np.concatenate([p.scale for p in plans])
    shifts = np.concatenate([p.shift for p in plans])
    assert scales.size == 300 and np.all(np.abs(scales - 1) <= 0.1) and np.all(np.abs(shifts) <= 0.1)
    assert np.ptp(scales) > 0.15 and np.ptp(shifts) > 0.15  # the whole range is used
    flips = np.array([p.flips for p in plans])
    assert np.all(np.abs(flips.mean(axis=0) - 0.5) < 0.1)
    assert all(p.matrix is None for p in plans)


def test_channel_wise_draws_one_factor_per_channel_and_applies_it():
    plan = sample_plan(AugmentConfig(channel_wise=True, flip_prob=(0, 0, 0)), np.random.default_rng(1), 4)
    assert plan.scale.shape == (4,) and len(set(plan.scale.tolist())) == 4
    image, label = _volume()
    region, region_label = _region(plan, image, label)
    out, _ = apply_plan(plan, region, region_label, PATCH)
    expected = region * plan.scale[:, None, None, None] + plan.shift[:, None, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_flips_move_image_and_label_together():
    image, label = _volume()
    image[0] = label  # an asymmetric marker the label must follow
    plan = _plan(flips=(True, False, True))
    region, region_label = _region(plan, image, label)
    out, out_label = apply_plan(plan, region, region_label, PATCH)
    np.testing.assert_array_equal(out_label, region_label[::-1, :, ::-1])
    np.testing.assert_array_equal(out, region[:, ::-1, :, ::-1])
    np.testing.assert_array_equal(out[0], out_label)
    assert out.flags.c_contiguous and out_label.flags.c_contiguous


def test_identity_matrix_reproduces_the_plain_patch_exactly():
    image, label = _volume()
    plain = apply_plan(_plan(), *_region(_plan(), image, label), PATCH)
    resampled = apply_plan(_plan(matrix=np.eye(3)), *_region(_plan(matrix=np.eye(3)), image, label), PATCH)
    assert read_shape(_plan(matrix=np.eye(3)), PATCH) != PATCH  # a margin was read
    np.testing.assert_allclose(resampled[0], plain[0], atol=1e-6)
    np.testing.assert_array_equal(resampled[1], plain[1])


def test_quarter_turn_matrix_rotates_about_the_patch_centre():
    image, label = _volume()
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # out (i, j) ← src (-j, i)
    plain_image, plain_label = apply_plan(_plan(), *_region(_plan(), image, label), PATCH)
    out, out_label = apply_plan(_plan(matrix=turn), *_region(_plan(matrix=turn), image, label), PATCH)
    np.testing.assert_array_equal(out_label, np.rot90(plain_label, k=-1, axes=(0, 1)))
    np.testing.assert_allclose(out, np.rot90(plain_image, k=-1, axes=(1, 2)), atol=1e-5)


def test_rotation_and_zoom_keep_labels_to_the_schemes_values():
    config = AugmentConfig(rotate_deg=(15, 15, 15), rotate_prob=1.0, zoom=0.2, zoom_prob=1.0)
    rng = np.random.default_rng(3)
    image, label = _volume(shape=(30, 30, 30))
    for _ in range(3):
        plan = sample_plan(config, rng, 4)
        assert plan.matrix is not None
        size = read_shape(plan, PATCH)
        assert all((r - p) % 2 == 0 and r >= p for r, p in zip(size, PATCH))
        out, out_label = apply_plan(plan, *_region(plan, image, label, start=(9, 9, 9)), PATCH)
        assert out.shape == (4, *PATCH) and out_label.shape == PATCH
        assert set(np.unique(out_label).tolist()) <= {0, 1, 2, 4}


def test_sample_plan_uses_a_fixed_number_of_draws():
    """So a patch's position does not depend on which augmentations are switched on."""
    for config in (AugmentConfig(), AugmentConfig.none(),
                   AugmentConfig(rotate_deg=(10, 10, 10), rotate_prob=1.0, channel_wise=False)):
        rng = np.random.default_rng(9)
        sample_plan(config, rng, 4)
        assert rng.random() == pytest.approx(_after_one_plan())


def _after_one_plan():
    rng = np.random.default_rng(9)
    sample_plan(AugmentConfig(), rng, 4)
    return rng.random()


@pytest.mark.parametrize("values, message", [
    ({"flip": 0.5}, "augment: unknown key(s) flip; valid keys: flip_prob"),
    ({"flip_prob": (0.5, 0.5, 1.5)}, "flip_prob must lie in [0, 1]"),
    ({"rotate_deg": (0, 0, 90)}, "rotate_deg must lie in [0, 45]"),
    ({"zoom": 0.7}, "zoom must lie in [0, 0.5)"),
])
def test_config_errors_name_the_problem(values, message):
    with pytest.raises(ValueError, match="valid keys" if "unknown" in message else None) as err:
        AugmentConfig.from_dict(values)
    assert message in str(err.value)


def test_config_from_dict_accepts_lists():
    config = AugmentConfig.from_dict({"flip_prob": [1, 0, 0], "rotate_deg": [5, 5, 5], "rotate_prob": 0.2})
    assert config.flip_prob == (1, 0, 0) and config.rotate_deg == (5, 5, 5)
    hash(config)  # still frozen and hashable
