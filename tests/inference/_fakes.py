"""Synthetic cases on disk, stand-in networks and a tiny real network for the inference tests.

The synthetic tumour is encoded in the intensities (FLAIR bright in WT, T1ce in TC, T2 in ET), so
a pointwise "network" thresholding the z-scored channels reproduces the reference label exactly:
any orientation, crop or label-convention mistake in the pipeline shows up as a wrong voxel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glioseg.data.formats import CHANNELS
from glioseg.data.labels import get_scheme
from glioseg.data.output_space import OutputSpace
from glioseg.data.preprocess import PreprocessConfig
from glioseg.inference.bundle import ModelBundle
from tests._cases import write_case_files

REPO = Path(__file__).resolve().parents[2]
LPS = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 35], [0, 0, 1.0, -5], [0, 0, 0, 1]])
# Array axes (i, j, k) point to world (S, L, A) with 1.2 / 0.9 / 1.5 mm voxels: a permutation with flips.
PERMUTED = np.array([[0, -0.9, 0, 30], [0, 0, 1.5, -20], [1.2, 0, 0, -10], [0, 0, 0, 1]])
SHAPE = (40, 36, 30)


def synthetic(shape=SHAPE, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(4, *shape) int16 images and a BraTS label (0, 1, 2, 4) with an off-centre nested tumour."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    shape_arr = np.array(shape, dtype=np.float64)

    def radius(centre, size):
        return np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, size)))

    brain = radius(shape_arr * [0.5, 0.5, 0.5], shape_arr * [0.42, 0.4, 0.4]) < 1
    tumour = radius(shape_arr * [0.62, 0.4, 0.55], [7.0, 6.0, 5.0])
    label = np.zeros(shape, dtype=np.uint8)
    label[tumour < 1] = 2
    label[tumour < 0.6] = 1
    label[tumour < 0.3] = 4
    label[~brain] = 0
    image = np.zeros((4, *shape), dtype=np.int16)
    for c in range(4):
        image[c][brain] = 100 + rng.integers(-3, 4, int(brain.sum()))
    image[0][np.isin(label, (1, 2, 4))] += 200   # FLAIR: whole tumour
    image[2][np.isin(label, (1, 4))] += 300      # T1ce: tumour core
    image[3][label == 4] += 400                  # T2: enhancing (synthetic code, not anatomy)
    return image, label


def write_case(root: Path, affine: np.ndarray, case_id: str = "Brats18_TEST_001_1", seed: int = 0,
               qform_code: int = 1, sform_code: int = 1) -> tuple[Path, np.ndarray]:
    """One BraTS-layout case folder; returns (folder, reference label)."""
    image, label = synthetic(seed=seed)
    if (root / case_id).exists():
        raise FileExistsError(root / case_id)
    folder = write_case_files(root, case_id, dict(zip(CHANNELS, image)), label, affine,
                              qform_code=qform_code, sform_code=sform_code)
    return folder, label


def bundle_from_model(model: torch.nn.Module, name: str, *, options: dict, target: str, scheme: str,
                      preprocess: dict, patch_size, channels=CHANNELS, site_index: dict | None = None) -> ModelBundle:
    """A bundle of a live model, as the trainer stores one; out channels follow the target and scheme."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out_channels = OutputSpace(target, get_scheme(scheme)).channels
    return ModelBundle(model=name, options=options, in_channels=len(channels), out_channels=out_channels,
                       target=target, channels=tuple(channels), scheme=scheme, preprocess=preprocess,
                       site_index=site_index or {}, patch_size=patch_size, weights=weights)


def make_bundle(model: str = "fake-pointwise", patch=(16, 16, 16), sha: str = "0" * 64, **kw) -> ModelBundle:
    fields = dict(model=model, options={}, in_channels=4, out_channels=3, target="regions", channels=CHANNELS,
                  scheme="brats", preprocess=PreprocessConfig().to_dict(), site_index={}, patch_size=patch,
                  sha256=sha)
    fields.update(kw)
    return ModelBundle(**fields)


class FakeNetwork:
    """A network stand-in: ``fn(x) -> logits``; the same attributes as ``TorchNetwork``."""

    kind = "fake"
    fixed_window = None
    source = Path("fake.pt")

    def __init__(self, fn, bundle: ModelBundle | None = None, size_divisor: int = 1):
        self.fn, self.bundle, self.size_divisor = fn, bundle or make_bundle(), size_divisor
        self.patch_size, self.name = self.bundle.patch_size, self.bundle.model
        self.calls = []

    def __call__(self, x: torch.Tensor, site_id):
        self.calls.append((tuple(x.shape), site_id))
        return self.fn(x)


def threshold_logits(x: torch.Tensor) -> torch.Tensor:
    """WT from FLAIR, TC from T1ce, ET from T2: z-score above 1 → large positive logit."""
    return 20.0 * (x[:, [0, 2, 3]] - 1.0)


def tiny_bundle(seed: int = 0) -> ModelBundle:
    """A real registered network, as small as it goes: SegResNet with 8 initial filters."""
    from glioseg.models.registry import create

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create("segresnet", in_channels=4, out_channels=3, init_filters=8)
    return bundle_from_model(model, "segresnet", options={"init_filters": 8}, target="regions", scheme="brats",
                             preprocess=PreprocessConfig().to_dict(), patch_size=(16, 16, 16),
                             site_index={"TCIA01": 0})


DALIGHT_TINY = {"base_width": 8, "bottleneck_width": 16, "head_width": 8, "num_ids": 2}


def tiny_dalight_bundle(seed: int = 0) -> ModelBundle:
    """A small DALight-3D whose site TCIA01 (identifier 1) has its own, non-default norm affine."""
    from glioseg.models.registry import create

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create("dalight3d", in_channels=4, out_channels=3, **DALIGHT_TINY)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma.weight"):
                param[1].mul_(3.0)
    return bundle_from_model(model, "dalight3d", options=DALIGHT_TINY, target="regions", scheme="brats",
                             preprocess=PreprocessConfig().to_dict(), patch_size=(16, 16, 16),
                             site_index={"TCIA01": 1})
