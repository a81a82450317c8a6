"""ModelBundle: state round trips through checkpoints and safetensors; untrusted files are refused."""
from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
import torch

from glioseg.files import file_sha256
from glioseg.inference.bundle import ModelBundle, load_bundle
from glioseg.inference.export import write_released
from glioseg.checkpoint_io import sidecar_path
from glioseg.training.checkpoint import save_checkpoint
from ._fakes import make_bundle, tiny_bundle


def _outputs(bundle: ModelBundle) -> torch.Tensor:
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return bundle.build_model()(x)


def test_metadata_is_json_and_state_round_trips():
    bundle = make_bundle(site_index={"A": 1})
    assert json.loads(json.dumps(bundle.metadata())) == bundle.metadata()
    back = ModelBundle.from_state(bundle.to_state())
    assert back.metadata() == bundle.metadata() and back.patch_size == (16, 16, 16)


def test_from_state_rejects_unknown_missing_and_future_keys():
    state = make_bundle().to_state()
    with pytest.raises(ValueError, match=r"bundle: unknown key\(s\) colour; valid keys: model, options"):
        ModelBundle.from_state({**state, "colour": "red"})
    with pytest.raises(ValueError, match=r"bundle: missing key\(s\) scheme; valid keys: model"):
        ModelBundle.from_state({k: v for k, v in state.items() if k != "scheme"})
    with pytest.raises(ValueError, match="bundle_version 2 is not supported"):
        ModelBundle.from_state({**state, "bundle_version": 2})


def test_bundle_checks_its_own_consistency():
    with pytest.raises(ValueError, match="needs out_channels=4"):
        make_bundle(target="classes")
    with pytest.raises(ValueError, match="unknown"):
        make_bundle(target="logits")
    with pytest.raises(ValueError, match="4 distinct names"):
        make_bundle(channels=("flair", "flair", "t1", "t2"))
    assert make_bundle(target="classes", out_channels=4).out_channels == 4


def test_checkpoint_round_trip_builds_the_same_model(tmp_path):
    bundle = tiny_bundle()
    path = save_checkpoint(tmp_path / "last.pt", {"bundle": bundle.to_state(), "epoch": 3})
    loaded = load_bundle(path)
    assert loaded.sha256 == file_sha256(path) and loaded.site_index == {"TCIA01": 0}
    torch.testing.assert_close(_outputs(loaded), _outputs(bundle), rtol=0, atol=0)
    model = loaded.build_model()
    assert not model.training


def test_released_safetensors_round_trip_and_tampering(tmp_path):
    bundle = tiny_bundle()
    write_released(bundle, tmp_path / "model.safetensors")
    for path in (tmp_path / "model.safetensors", tmp_path / "model.safetensors.json"):
        loaded = load_bundle(path)
        torch.testing.assert_close(_outputs(loaded), _outputs(bundle), rtol=0, atol=0)
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="differs from model.safetensors.json's.*damaged or replaced"):
        load_bundle(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors.json").unlink()
    with pytest.raises(ValueError, match="its config model.safetensors.json is missing"):
        load_bundle(tmp_path / "model.safetensors")


def test_build_model_rejects_weights_of_another_model():
    bundle = tiny_bundle()
    wrong = ModelBundle.from_state({**bundle.to_state(), "options": {"init_filters": 16}})
    with pytest.raises(ValueError, match="weights do not fit segresnet"):
        wrong.build_model()


def test_refuses_torchscript(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv3d(4, 3, 1)), str(path))
    with pytest.raises(ValueError, match="refused: a TorchScript archive"):
        load_bundle(path)


def test_refuses_legacy_pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"bundle": make_bundle().to_state()}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="refused: a legacy pickle"):
        load_bundle(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_a_malicious_pickle_even_with_a_valid_hash(tmp_path):
    buffer = io.BytesIO()
    torch.save({"bundle": _Exploit()}, buffer)
    path = tmp_path / "model.pt"
    path.write_bytes(buffer.getvalue())
    sidecar_path(path).write_text(f"{file_sha256(path)}  model.pt\n")
    with zipfile.ZipFile(path) as archive:  # a real zip checkpoint whose pickle names os.system
        assert any(b"system" in archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    with pytest.raises(ValueError, match=r"refused by torch.load\(weights_only=True\)"):
        load_bundle(path)


def test_refuses_checkpoints_without_bundle_and_other_files(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match="without a \"bundle\""):
        load_bundle(path)
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a glioseg model file"):
        load_bundle(junk)
    with pytest.raises(ValueError, match="no such model file"):
        load_bundle(tmp_path / "absent.pt")
