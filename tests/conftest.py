"""Shared fixtures: tiny synthetic datasets in every supported layout, and the real data.

Files are written with nibabel directly (not with glioseg's writer) so that tests of the
reader do not depend on the writer. Every volume is small (24×24×16 by default) with the
LPS affine real BraTS files carry, and labels nested edema ⊃ core ⊃ enhancing.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from glioseg.data.labels import get_scheme

from ._cases import missing_data_reason, shared_data_dir, write_case_files, write_volume
from ._probe import PROBE_ENV, force_probe, probe_mode

# Tests compare training runs across processes bitwise (kill and resume, subprocess against
# in-process); a per-process measurement of the CPU kernels could choose differently under load
# between two such processes. So the suite runs glioseg's kernels by default, subprocesses
# included; the measurement itself is tested with the ``measured_kernels`` fixture.
os.environ.setdefault("GLIOSEG_KERNELS", "glioseg")

CHANNEL_BASE = {"flair": 100, "t1": 200, "t1ce": 300, "t2": 400}
SMALL_SHAPE = (24, 24, 16)
MSD_ORDER = ("FLAIR", "T1w", "t1gd", "T2w")
_MSD_NAME = {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}
# BraTS 2023's file suffixes (CASE-t2f.nii.gz, ...) for the 2017-2021 names (CASE_flair.nii.gz, ...)
BRATS2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}


def lps_affine(shape=SMALL_SHAPE, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The BraTS affine: diag(-1, -1, 1) with the y origin at the far edge."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing[1]
    return affine


def synthetic_case(shape=SMALL_SHAPE, seed=0, scheme="brats"):
    """Four int16 channels (distinct intensity levels) and a label with nested tumour regions."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    brain = ((grid / (np.array(shape)[:, None, None, None] * 0.45)) ** 2).sum(0) <= 1
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, size=3)
    radius = np.sqrt(((np.stack(np.indices(shape)) - centre[:, None, None, None]) ** 2).sum(0))
    rules = get_scheme(scheme)
    label = np.zeros(shape, dtype=np.uint8)
    label[(radius <= 5) & brain] = rules.edema
    label[(radius <= 3.5) & brain] = rules.enhancing
    label[(radius <= 2) & brain] = rules.core
    channels = {}
    for name, base in CHANNEL_BASE.items():
        noise = rng.integers(0, 20, size=shape)
        channels[name] = np.where(brain, base + noise + 10 * label, 0).astype(np.int16)
    return channels, label


def write_nifti(path, array, affine=None, *, qform_code=1, sform_code=1, dtype=None, **fields) -> Path:
    """Write ``array`` with nibabel; ``fields`` are raw header fields set after the affine."""
    array = np.asarray(array)
    affine = lps_affine(array.shape[:3]) if affine is None else affine
    return write_volume(path, array, affine, qform_code=qform_code, sform_code=sform_code, dtype=dtype, **fields)


def _brats_case(root, case_id, seed, shape, sep, suffixes, label_dtype, scheme):
    channels, label = synthetic_case(shape, seed, scheme)
    write_case_files(root, case_id, channels, label, lps_affine(shape), sep=sep, suffixes=suffixes,
                     label_dtype=label_dtype)
    (root / case_id / f"._{case_id}{sep}seg.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble")


def _msd(root, ids, shape, order):
    meta = {"name": "BRATS", "modality": {str(i): m for i, m in enumerate(order)},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "training": []}
    for n, case_id in enumerate(ids):
        channels, label = synthetic_case(shape, n, "msd")
        stack = np.stack([channels[_MSD_NAME[m]] for m in order], axis=-1)
        write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", stack)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label)
        meta["training"].append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        (root / "imagesTr" / f"._{case_id}.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def _manifest(root, ids, shape, kind):
    rows = []
    for n, case_id in enumerate(ids):
        channels, label = synthetic_case(shape, n, "brats")
        row = {"case": case_id}
        for name, array in channels.items():
            row[name] = str(write_nifti(root / "files" / f"{case_id}_{name}.nii.gz", array).relative_to(root))
        row["label"] = str(write_nifti(root / "files" / f"{case_id}_mask.nii.gz", label).relative_to(root))
        row["site"] = f"site{n % 2}"
        rows.append(row)
    if kind == "csv":
        with open(root / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return root / "manifest.csv"
    (root / "manifest.json").write_text(json.dumps({"scheme": "brats", "cases": rows}))
    return root / "manifest.json"


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: ``make_dataset(layout, cases=2, shape=(24, 24, 16), ...)`` → dataset path.

    ``layout`` is ``brats`` (2017–2021), ``brats2023``, ``msd`` (4-D images; ``order`` sets
    dataset.json's modality order), ``csv`` or ``json`` (manifests with sites; the path
    returned is the manifest file). BraTS layouts get a ``._`` AppleDouble file per case.
    """
    def make(layout="brats", cases=2, shape=SMALL_SHAPE, label_dtype=np.uint8, order=MSD_ORDER, name=None):
        root = tmp_path / (name or layout)
        root.mkdir()
        if layout == "brats":
            ids = [f"Brats18_TCIA0{n + 1}_{100 + n}_1" for n in range(cases)]
            suffixes, sep, scheme = {c: c for c in CHANNEL_BASE}, "_", "brats"
        elif layout == "brats2023":
            ids = [f"BraTS-GLI-{n:05d}-000" for n in range(cases)]
            suffixes, sep, scheme = {c: BRATS2023_SUFFIX[c] for c in CHANNEL_BASE}, "-", "brats2023"
        elif layout == "msd":
            return _msd(root, [f"BRATS_{n + 1:03d}" for n in range(cases)], shape, order)
        elif layout in ("csv", "json"):
            return _manifest(root, [f"case{n}" for n in range(cases)], shape, layout)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        for n, case_id in enumerate(ids):
            _brats_case(root, case_id, n, shape, sep, suffixes, label_dtype, scheme)
        return root

    return make


@pytest.fixture
def brats_root(make_dataset) -> Path:
    """A two-case BraTS 2017–2021 dataset (24×24×16, LPS, labels 0/1/2/4)."""
    return make_dataset("brats")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``tests/_cases.shared_data_dir``: ``$GLIOSEG_SHARED_DATA`` or
    ``<repo>/../shared/data``); skips when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(missing_data_reason())
    return path


@pytest.fixture
def nifti():
    """``nifti(path, array, affine=None, qform_code=1, sform_code=1, dtype=None, **header_fields)``."""
    return write_nifti


@pytest.fixture
def case_arrays():
    """``case_arrays(shape=(24, 24, 16), seed=0, scheme="brats")`` → ({channel: int16}, uint8 label)."""
    return synthetic_case


@pytest.fixture
def affine_lps():
    """``affine_lps(shape, spacing=(1, 1, 1))`` → the 4×4 BraTS (LPS) affine."""
    return lps_affine


def pytest_report_header(config):
    """What this machine offers low precision, and whether the probes are forced."""
    from glioseg.precisions import describe_device

    return [f"glioseg device: {describe_device('cpu')}",
            f"glioseg precision probes: {probe_mode()} ({PROBE_ENV}=real|fast|slow forces every probe)"]


@pytest.fixture(autouse=True)
def _forced_probes(monkeypatch):
    """With ``GLIOSEG_TEST_PROBE=fast`` (``slow``) every precision probe of a test, training's and
    prediction's, finds bf16 faster (slower) than fp32, on any CPU: both branches run everywhere."""
    if probe_mode() != "real":
        force_probe(monkeypatch, probe_mode())


@pytest.fixture
def forced_probe(monkeypatch):
    """``forced_probe("fast" | "slow")``: this test's probes find bf16 faster / slower than fp32."""
    return lambda mode: force_probe(monkeypatch, mode)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A released model built by the release builder from a 6-step training run, in a temporary
    ``released/`` folder (``tests/inference/_release.py``); tests that damage it copy it first."""
    from tests.inference._release import make_release

    return make_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def tiny_ensemble(tiny_release, tmp_path_factory):
    """A 2-member released ensemble (``tests/inference/_release.py``): the tiny release's run and a
    second tiny run of another seed, in fold order, stored in fp32."""
    from tests.inference._release import make_ensemble

    return make_ensemble(tmp_path_factory.mktemp("ensemble"), tiny_release)


@pytest.fixture
def one_thread():
    """Train in-process with one torch thread (as the subprocess runs do), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SLOW_HINT = "slow on a 2-core CPU; run with -m slow (only the slow tests) or make test-all (every test)"


def pytest_collection_modifyitems(config, items):
    """The suite's one ``slow`` rule: a default run skips every test marked ``slow``; a marker
    expression that names ``slow`` (``-m slow``, ``-m "slow or not slow"`` as ``make test-all``
    runs) selects them as pytest always does."""
    if "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason=SLOW_HINT)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture
def measured_kernels(monkeypatch):
    """A process that has measured no CPU kernel yet and is not forced to either side (the choice
    is process-wide: no test may see another's)."""
    from glioseg.models import kernel_choice

    monkeypatch.delenv(kernel_choice.ENV, raising=False)
    kernel_choice.forget()
    yield kernel_choice
    kernel_choice.forget()
