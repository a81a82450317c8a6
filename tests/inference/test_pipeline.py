"""Predictions land on the input exactly: geometry, label convention, oracle, atomic resumable writing."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg.data import preprocess
from glioseg.data.cases import load_case
from glioseg.data.labels import get_scheme, labels_to_regions
from glioseg.inference import inputs, pipeline, writer
from glioseg.inference.pipeline import OutputOptions, predict_all
from glioseg.inference.precision import PrecisionChoice
from glioseg.inference.predictor import PredictConfig, Predictor, RunStats
from ._fakes import LPS, PERMUTED, FakeNetwork, make_bundle, synthetic, threshold_logits, write_case


def _predict(paths, out, net=None, scheme=None, options=OutputOptions(), **config):
    net = net or FakeNetwork(threshold_logits)
    predictor = Predictor([net], PredictConfig(**config))
    items = inputs.collect([Path(p) for p in paths], {}, None, predictor.bundle.channels, scheme, "brats")
    return predict_all(items, predictor, out, options), items


def _assert_same_geometry(output: Path, source: Path):
    out, ref = nib.load(str(output)), nib.load(str(source))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-5)
    np.testing.assert_array_equal(out.header.get_sform(), ref.header.get_sform())
    for key in ("qform_code", "sform_code"):
        assert int(out.header[key]) == int(ref.header[key])
    assert out.get_data_dtype() == np.uint8


@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted"])
@pytest.mark.parametrize("window", ["box", "patch", "volume"])
def test_prediction_reproduces_the_label_in_the_input_geometry(tmp_path, affine, window):
    folder, label = write_case(tmp_path / "data", affine, qform_code=2, sform_code=1)
    counts, _ = _predict([tmp_path / "data"], tmp_path / "out", window=window)
    assert counts == {"done": 1, "skipped": 0, "failed": 0}
    output = tmp_path / "out" / f"{folder.name}.nii.gz"
    _assert_same_geometry(output, folder / f"{folder.name}_seg.nii.gz")
    predicted = np.asanyarray(nib.load(str(output)).dataobj)
    assert set(np.unique(predicted)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(predicted, label)


def test_labels_are_written_in_the_requested_convention(tmp_path):
    folder, label = write_case(tmp_path / "data", LPS)
    _predict([folder], tmp_path / "out", scheme="msd")
    predicted = np.asanyarray(nib.load(str(tmp_path / "out" / f"{folder.name}.nii.gz")).dataobj)
    msd = {0: 0, 2: 1, 1: 2, 4: 3}  # BraTS edema 2, core 1, ET 4 → MSD edema 1, non-enhancing 2, ET 3
    np.testing.assert_array_equal(predicted, np.vectorize(msd.get)(label))


def test_sidecar_records_models_timings_and_volumes(tmp_path):
    folder, label = write_case(tmp_path / "data", PERMUTED)
    opts = OutputOptions(probabilities=True, uncertainty=True)
    _predict([folder], tmp_path / "out", options=opts, overlap=0.25)
    record = json.loads((tmp_path / "out" / f"{folder.name}.json").read_text())
    assert record["models"][0]["sha256"] == "0" * 64
    assert set(record["timings_s"]) == {"load", "preprocess", "inference", "write"}
    assert record["run"]["precision"] == "fp32" and record["run"]["overlap"] == 0.25
    voxel_ml = 1.2 * 0.9 * 1.5 / 1000
    assert record["volumes_ml"]["ET"] == pytest.approx((label == 4).sum() * voxel_ml)
    assert record["volumes_ml"]["WT"] == pytest.approx((label > 0).sum() * voxel_ml)
    probs = nib.load(str(tmp_path / "out" / "probabilities" / f"{folder.name}.nii.gz"))
    assert probs.shape == (*label.shape, 3) and probs.get_data_dtype() == np.float32
    np.testing.assert_array_equal(probs.affine, nib.load(str(folder / f"{folder.name}_seg.nii.gz")).affine)
    wt = np.asanyarray(probs.dataobj)[..., 0]
    np.testing.assert_array_equal(wt > 0.5, label > 0)
    entropy = np.asanyarray(nib.load(str(tmp_path / "out" / "uncertainty" / f"{folder.name}.nii.gz")).dataobj)
    assert entropy.shape == label.shape and 0 <= entropy.min() and entropy.max() <= 1


class OraclePredictor:
    """Returns a reference label pushed through the preprocessing as region "probabilities"."""

    def __init__(self, bundle, cached_label: np.ndarray):
        self.bundle, self.cached = bundle, cached_label
        self.config = PredictConfig()
        self.requested_precision, self.precision_choice = "fp32", PrecisionChoice("fp32", "fp32: as asked")
        self.window_notes = []
        self.networks = [FakeNetwork(threshold_logits, bundle)]
        self.postprocess = bundle.postprocess_config

    def case_probabilities(self, array, meta, site=None):
        assert self.cached.shape == array.shape[1:]
        return labels_to_regions(self.cached, get_scheme("brats")).astype(np.float32), RunStats()


def _oracle(folder: Path, out: Path) -> None:
    """Predict ``folder`` with the oracle; its reference goes through preprocess's own functions."""
    bundle = make_bundle()
    (item,) = inputs.from_path(folder, bundle.channels, None)
    image, _ = load_case(item.case, item.dataset)
    _, _, meta = preprocess.preprocess_case(image, None, item.case, bundle.preprocess_config())
    reference = np.asanyarray(nib.load(str(next(folder.glob("*_seg.nii.gz")))).dataobj).astype(np.uint8)
    cached = preprocess.crop(preprocess.reorient(reference, np.asarray(meta["ornt"])), meta["crop"]["box"])
    predict_all([item], OraclePredictor(bundle, cached), out)


@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted"])
def test_oracle_reproduces_the_reference_exactly(tmp_path, affine):
    folder, label = write_case(tmp_path / "data", affine)
    _oracle(folder, tmp_path / "out")
    predicted = nib.load(str(tmp_path / "out" / f"{folder.name}.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(predicted.dataobj), label)


@pytest.mark.realdata
@pytest.mark.parametrize("case_id", ["Brats18_TCIA03_265_1", "Brats18_2013_20_1"])
def test_oracle_on_real_lps_cases(tmp_path, shared_data, case_id):
    # Brats18_2013_20_1 has label voxels where FLAIR is 0: the crop box must still hold them.
    folder = shared_data / "brats18" / case_id
    _oracle(folder, tmp_path / "out")
    ref = nib.load(str(folder / f"{case_id}_seg.nii.gz"))
    out = nib.load(str(tmp_path / "out" / f"{case_id}.nii.gz"))
    predicted = np.asanyarray(out.dataobj)
    assert out.shape == ref.shape == (240, 240, 155)
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert set(np.unique(predicted)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(predicted, np.asanyarray(ref.dataobj))


def test_rerun_skips_only_verified_cases(tmp_path):
    write_case(tmp_path / "data", LPS, case_id="Brats18_TEST_001_1")
    write_case(tmp_path / "data", LPS, case_id="Brats18_TEST_002_1", seed=1)
    out = tmp_path / "out"
    assert _predict([tmp_path / "data"], out)[0]["done"] == 2
    assert _predict([tmp_path / "data"], out)[0] == {"done": 0, "skipped": 2, "failed": 0}
    # A damaged output, a missing sidecar and changed settings each force a redo.
    (out / "Brats18_TEST_001_1.nii.gz").write_bytes(b"garbage")
    assert _predict([tmp_path / "data"], out)[0] == {"done": 1, "skipped": 1, "failed": 0}
    (out / "Brats18_TEST_002_1.json").unlink()
    assert _predict([tmp_path / "data"], out)[0] == {"done": 1, "skipped": 1, "failed": 0}
    assert _predict([tmp_path / "data"], out, overlap=0.25)[0]["done"] == 2


def test_stale_parts_are_removed_and_a_half_file_is_redone(tmp_path):
    folder, label = write_case(tmp_path / "data", LPS)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".part-{folder.name}.nii.gz.abc123").write_bytes(b"\x1f\x8b half a file")
    (out / f"{folder.name}.nii.gz").write_bytes(b"\x1f\x8b half a file")  # e.g. copied by hand, no sidecar
    assert _predict([folder], out)[0]["done"] == 1
    assert not list(out.glob(".part-*"))
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out / f"{folder.name}.nii.gz")).dataobj), label)


def test_a_geometry_mismatch_after_writing_removes_the_file(tmp_path, monkeypatch):
    folder, _ = write_case(tmp_path / "data", LPS)
    real = writer.write_image

    def shifted(path, array, affine, reference=None):
        moved = affine.copy()
        moved[0, 3] += 1.0
        return real(path, array, moved, reference=reference)

    monkeypatch.setattr(writer, "write_image", shifted)
    with pytest.raises(ValueError, match="1 of 1 cases failed.*does not match the input's geometry"):
        _predict([folder], tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [pipeline.LOCK_FILE]   # the folder's lock only


def test_one_bad_case_does_not_stop_the_others(tmp_path):
    write_case(tmp_path / "data", LPS, case_id="Brats18_TEST_001_1")
    bad, _ = write_case(tmp_path / "data", LPS, case_id="Brats18_TEST_002_1")
    (bad / "Brats18_TEST_002_1_t1.nii.gz").write_bytes(b"\x1f\x8b\x08 not really")
    with pytest.raises(ValueError, match=r"1 of 2 cases failed.*Brats18_TEST_002_1"):
        _predict([tmp_path / "data"], tmp_path / "out")
    assert (tmp_path / "out" / "Brats18_TEST_001_1.json").is_file()
    assert not (tmp_path / "out" / "Brats18_TEST_002_1.nii.gz").exists()


def test_msd_4d_dataset_gets_msd_labels(tmp_path):
    image, label = synthetic()
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    # MSD stores FLAIR, T1w, T1gd, T2w along the last axis; our channel order is the same here.
    four_d = nib.Nifti1Image(np.moveaxis(image, 0, -1).astype(np.float32), LPS)
    nib.save(four_d, str(root / "imagesTr" / "BRATS_001.nii.gz"))
    msd_label = np.select([label == 4, label == 1, label == 2], [3, 2, 1], 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(msd_label, LPS), str(root / "labelsTr" / "BRATS_001.nii.gz"))
    meta = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    _predict([root], tmp_path / "out")
    out = nib.load(str(tmp_path / "out" / "BRATS_001.nii.gz"))
    assert out.shape == label.shape
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), msd_label)
