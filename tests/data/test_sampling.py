"""Patch sampler: purity in (seed, epoch, index), tumour-centred share, padding, memmap reads,
targets, DataLoader workers."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from glioseg.data.augment import AugmentConfig
from glioseg.data.labels import classes_to_labels, get_scheme
from glioseg.data.sampling import (PatchDataset, SamplerConfig, Volume, foreground_voxels, is_foreground_draw,
                                   make_loader, patch_start, read_region)

SCHEME = get_scheme("brats")
PATCH = (17, 15, 13)  # odd sizes: the centre voxel is unambiguous


def _tumour_volume(shape=(40, 36, 30), centre=(26, 12, 9), seed=0):
    """Image (4, *shape) with channel 0 equal to the label (a marker), nested spherical tumour."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    r = np.linalg.norm(grid - np.asarray(centre), axis=-1)
    label = np.select([r < 2, r < 4, r < 7], [1, 4, 2], 0).astype(np.uint8)
    image = np.random.default_rng(seed).standard_normal((4, *shape)).astype(np.float32)
    image[0] = label
    return image, label


@pytest.fixture(scope="module")
def volumes():
    a = _tumour_volume()
    b = _tumour_volume(shape=(30, 40, 28), centre=(5, 30, 20), seed=1)
    return [Volume("case_a", a[0], a[1], 0), Volume("case_b", b[0], b[1], 1)]


def _dataset(volumes, augment=AugmentConfig.none(), seed=0, **config):
    config = {"patch_size": PATCH, "samples_per_epoch": 200, **config}
    return PatchDataset(volumes, SCHEME, SamplerConfig(**config), augment, seed)


def test_item_is_a_pure_function_of_seed_epoch_and_index(volumes):
    ds = _dataset(volumes, augment=AugmentConfig(), samples_per_epoch=10)
    later = ds[7]
    _ = [ds[i] for i in range(10)]
    again = ds[7]
    assert torch.equal(later["image"], again["image"]) and torch.equal(later["target"], again["target"])
    other = _dataset(volumes, augment=AugmentConfig(), samples_per_epoch=10)  # a fresh copy, same seed
    assert torch.equal(other[7]["image"], later["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["image"], later["image"])
    assert torch.equal(ds[(0, 7)]["image"], later["image"])
    reseeded = _dataset(volumes, augment=AugmentConfig(), samples_per_epoch=10, seed=1)
    assert not torch.equal(reseeded[7]["image"], later["image"])


def test_every_patch_is_tumour_centred_with_fraction_one(volumes):
    ds = _dataset(volumes, foreground_fraction=1.0)
    for i in range(len(ds)):
        draw, item = ds.draw(i), ds[i]
        label = volumes[draw.volume].label
        assert draw.foreground is not None and label[draw.foreground] > 0
        offset = tuple(c - s for c, s in zip(draw.foreground, draw.start))
        assert all(0 <= o < p for o, p in zip(offset, PATCH))
        assert item["target"][(0, *offset)] == 1  # WT at the chosen voxel


def test_fraction_one_centres_exactly_where_the_volume_allows(volumes):
    ds = _dataset(volumes, foreground_fraction=1.0)
    centred = [ds.draw(i) for i in range(len(ds))]
    shape = volumes[0].image.shape[1:]
    inner = [d for d in centred if d.volume == 0]
    assert inner and all(d.start == tuple(c - p // 2 for c, p in zip(d.foreground, PATCH)) for d in inner
                         if all(p // 2 <= c < n - p // 2 for c, p, n in zip(d.foreground, PATCH, shape)))


def test_a_third_of_patches_are_forced_onto_tumour(volumes):
    ds = _dataset(volumes, foreground_fraction=1 / 3, samples_per_epoch=300)
    draws = [ds.draw(i) for i in range(300)]
    forced = [d for d in draws if d.foreground is not None]
    assert len(forced) == 100
    assert all(volumes[d.volume].label[d.foreground] > 0 for d in forced)
    # Each batch of three gets its share, so no batch is background-only by construction.
    assert all(sum(draws[k].foreground is not None for k in range(b, b + 3)) == 1 for b in range(0, 300, 3))


def test_foreground_draws_visit_each_tumour_label(volumes):
    ds = _dataset(volumes, foreground_fraction=1.0, samples_per_epoch=300)
    values = [int(volumes[d.volume].label[d.foreground]) for d in (ds.draw(i) for i in range(300))]
    shares = {v: values.count(v) / 300 for v in (1, 2, 4)}
    assert all(0.2 < s < 0.47 for s in shares.values()), shares


def test_random_patches_stay_inside_a_large_volume(volumes):
    ds = _dataset(volumes, foreground_fraction=0.0)
    for i in range(len(ds)):
        draw = ds.draw(i)
        shape = volumes[draw.volume].image.shape[1:]
        assert draw.foreground is None
        assert all(0 <= s <= n - p for s, n, p in zip(draw.start, shape, PATCH))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1 / 3, 0.5, 1.0])
def test_is_foreground_draw_gives_exact_counts(fraction):
    for n in (3, 12, 99, 1000):
        assert sum(is_foreground_draw(i, fraction) for i in range(n)) == int(np.floor(n * fraction + 1e-9))


def test_small_volume_is_padded_with_zeros(volumes):
    image, label = _tumour_volume(shape=(10, 12, 8), centre=(5, 6, 4))
    ds = PatchDataset([("small", image, label)], SCHEME,
                      SamplerConfig(patch_size=(16, 16, 16), samples_per_epoch=20, foreground_fraction=0.5),
                      AugmentConfig.none())
    for i in range(len(ds)):
        draw, item = ds.draw(i), ds[i]
        inside = tuple(slice(-s, -s + n) for s, n in zip(draw.start, image.shape[1:]))
        assert all(s <= 0 for s in draw.start)
        np.testing.assert_array_equal(item["image"][(slice(None), *inside)].numpy(), image)
        mask = np.zeros((16, 16, 16), bool)
        mask[inside] = True
        assert (item["image"].numpy()[:, ~mask] == 0).all() and (item["target"].numpy()[:, ~mask] == 0).all()


def test_read_region_pads_and_matches_slicing():
    a = np.arange(4 * 5 * 6 * 7, dtype=np.float32).reshape(4, 5, 6, 7)
    out = read_region(a, (-2, 3, 4), (4, 4, 4))
    np.testing.assert_array_equal(out[:, 2:, :3, :3], a[:, :2, 3:, 4:])
    assert out[:, :2].sum() == 0 and out[:, :, 3:].sum() == 0 and out[:, :, :, 3:].sum() == 0
    assert read_region(a, (10, 0, 0), (2, 2, 2)).sum() == 0  # no overlap at all


class _Spy:
    """An array stand-in that records which regions are read from it."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        self.reads.append(np.empty(self.shape)[key].shape)
        return self.array[key]


def test_only_the_patch_is_read_from_a_read_only_memmap(tmp_path, volumes):
    np.save(tmp_path / "image.npy", volumes[0].image)
    np.save(tmp_path / "label.npy", volumes[0].label)
    image = np.load(tmp_path / "image.npy", mmap_mode="r")
    label = np.load(tmp_path / "label.npy", mmap_mode="r")
    spy = _Spy(image)
    ds = PatchDataset([("a", spy, label)], SCHEME, SamplerConfig(patch_size=PATCH, samples_per_epoch=5),
                      AugmentConfig.none())
    for i in range(5):
        item, draw = ds[i], ds.draw(i)
        region = tuple(slice(s, s + p) for s, p in zip(draw.start, PATCH))
        np.testing.assert_array_equal(item["image"].numpy(), image[(slice(None), *region)])
    assert spy.reads == [(4, *PATCH)] * 5


def test_targets_are_nested_regions(volumes):
    ds = _dataset(volumes, augment=AugmentConfig(), foreground_fraction=1.0, samples_per_epoch=20)
    for i in range(len(ds)):
        wt, tc, et = ds[i]["target"].bool()
        assert ds[i]["target"].dtype == torch.float32 and tc.any()
        assert not (et & ~tc).any() and not (tc & ~wt).any()


def test_class_targets_map_brats_labels_to_indices(volumes):
    ds = _dataset(volumes, augment=AugmentConfig(flip_prob=(0.5, 0.5, 0.5), intensity_prob=0.0),
                  foreground_fraction=1.0, samples_per_epoch=20, target="classes")
    for i in range(len(ds)):
        item = ds[i]
        target = item["target"]
        assert target.dtype == torch.int64 and set(target.unique().tolist()) <= {0, 1, 2, 3}
        # Channel 0 of the image is the label itself: flips moved both together.
        np.testing.assert_array_equal(classes_to_labels(target.numpy(), SCHEME), item["image"][0].numpy())
    assert {0, 1, 2, 3} <= set(torch.cat([ds[i]["target"].flatten() for i in range(20)]).unique().tolist())


def test_id_dropout_replaces_site_ids(volumes):
    kept = [_dataset(volumes, id_dropout=0.0)[i]["site_id"] for i in range(40)]
    assert set(kept) == {0, 1}
    mixed = [_dataset(volumes, id_dropout=0.5)[i]["site_id"] for i in range(60)]
    assert {-1, 0, 1} <= set(mixed) and 10 < mixed.count(-1) < 50
    assert {_dataset(volumes, id_dropout=1.0)[i]["site_id"] for i in range(20)} == {-1}


def test_loader_with_two_workers_yields_the_batches_of_zero_workers(volumes):
    ds = _dataset(volumes, augment=AugmentConfig(), samples_per_epoch=6)
    serial, parallel = make_loader(ds, batch_size=3, workers=0), make_loader(ds, batch_size=3, workers=2)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        a, b = list(serial), list(parallel)  # the persistent workers must follow set_epoch
        assert len(a) == len(b) == 2
        for x, y in zip(a, b):
            assert x["case"] == y["case"] and torch.equal(x["site_id"], y["site_id"])
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])
        if epoch == 0:
            first = a[0]["image"]
        else:
            assert not torch.equal(first, a[0]["image"])
    assert parallel.persistent_workers and parallel.pin_memory == torch.cuda.is_available()


def test_loader_over_a_subset_keeps_the_datasets_items(volumes):
    """A Subset (rest of an epoch after resume, one rank's share) yields exactly those items."""
    ds = _dataset(volumes, augment=AugmentConfig(), samples_per_epoch=9)
    ds.set_epoch(4)
    batches = list(make_loader(torch.utils.data.Subset(ds, [7, 2, 5]), batch_size=2, workers=1))
    assert [len(b["case"]) for b in batches] == [2, 1]
    images = torch.cat([b["image"] for b in batches])
    assert all(torch.equal(images[k], ds[i]["image"]) for k, i in enumerate([7, 2, 5]))
    with pytest.raises(ValueError, match="PatchDataset or a Subset"):
        make_loader(torch.utils.data.TensorDataset(torch.zeros(3)), batch_size=1)


def test_pickling_sends_memmaps_by_reference(tmp_path, volumes):
    np.save(tmp_path / "image.npy", volumes[0].image)
    np.save(tmp_path / "label.npy", volumes[0].label)
    ds = PatchDataset([("a", np.load(tmp_path / "image.npy", mmap_mode="r"),
                        np.load(tmp_path / "label.npy", mmap_mode="r"), 3)], SCHEME,
                      SamplerConfig(patch_size=PATCH, samples_per_epoch=4), AugmentConfig(), seed=5)
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000 < volumes[0].image.nbytes
    copy = pickle.loads(blob)
    assert isinstance(copy.volumes[0].image, np.memmap)
    assert torch.equal(copy[2]["image"], ds[2]["image"]) and copy[2]["site_id"] == 3


def test_unlabelled_volumes_give_images_only_and_mixing_is_refused(volumes):
    ds = PatchDataset([("u", volumes[0].image, None)], SCHEME, SamplerConfig(patch_size=PATCH, samples_per_epoch=3))
    assert set(ds[0]) == {"image", "case", "site_id"} and ds[0]["site_id"] == -1
    with pytest.raises(ValueError, match="every volume has a label or none"):
        PatchDataset([("u", volumes[0].image, None), volumes[1]], SCHEME)


def test_shape_mismatch_is_refused(volumes):
    with pytest.raises(ValueError, match="case_a: image must be"):
        PatchDataset([("case_a", volumes[0].image, volumes[1].label)], SCHEME)


@pytest.mark.parametrize("values, message", [
    ({"patch": (8, 8, 8)}, "sampler: unknown key(s) patch; valid keys: patch_size"),
    ({"target": "labels"}, "target must be one of"),
    ({"foreground_fraction": 1.5}, "foreground_fraction must lie in [0, 1]"),
    ({"patch_size": (8, 8)}, "patch_size must be three positive integers"),
])
def test_sampler_config_errors(values, message):
    with pytest.raises(ValueError) as err:
        SamplerConfig.from_dict(values)
    assert message in str(err.value)


def test_foreground_voxels_subsample_within_the_limit():
    label = np.zeros((20, 20, 20), np.uint8)
    label[:10] = 2
    label[15, 15, 15] = 4
    index = foreground_voxels(label, (1, 2, 4), limit=100)
    assert set(index) == {2, 4} and len(index[2]) <= 100 and index[4].tolist() == [15 * 400 + 15 * 20 + 15]
    assert (label.reshape(-1)[index[2]] == 2).all()


def test_patch_start_keeps_the_centre_inside():
    assert patch_start((0, 5, 39), (8, 8, 8), (40, 40, 40)) == (0, 1, 32)
    assert patch_start((3, 3, 3), (16, 16, 16), (10, 10, 10)) == (-5, -5, -5)
