"""read_image / write_image: every "Reading data" case of robustness.md, fed and its message checked."""
from __future__ import annotations

import gzip
import logging
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from glioseg.data.io import DataError, Image, ReadLimits, read_image, write_image


def _header(shape=(4, 4, 4), dtype=np.int16, affine=None, **fields) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    affine = np.eye(4) if affine is None else affine
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    return header


def _raw(path, header, payload: bytes, compress=None):
    """Header + empty extension flag + ``payload`` written as is (gzip when the name says so)."""
    blob = header.binaryblock + b"\x00" * 4 + payload
    compress = str(path).endswith(".gz") if compress is None else compress
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


@pytest.fixture
def volume(case_arrays):
    channels, label = case_arrays()
    return channels["flair"], label


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_reads_values_affine_and_dtype(tmp_path, nifti, affine_lps, volume, name):
    image, label = volume
    path = nifti(tmp_path / name, image)
    got = read_image(path)
    assert got.array.dtype == np.int16 and np.array_equal(got.array, image)
    assert np.allclose(got.affine, affine_lps(image.shape))
    assert got.orientation == "LPS" and got.spacing == (1.0, 1.0, 1.0) and got.path == path
    assert read_image(nifti(tmp_path / "l.nii.gz", label)).array.dtype == np.uint8
    assert read_image(path, dtype=np.float32).array.dtype == np.float32


def test_big_endian_and_nifti2_are_read(tmp_path, volume):
    image, _ = volume
    big = nib.Nifti1Image(image.astype(">i2"), np.eye(4))
    nib.save(big, tmp_path / "big.nii")
    assert np.array_equal(read_image(tmp_path / "big.nii").array, image)
    nib.save(nib.Nifti2Image(image, np.eye(4)), tmp_path / "two.nii.gz")
    assert np.array_equal(read_image(tmp_path / "two.nii.gz").array, image)


@pytest.mark.parametrize("name", ["t.nii", "t.nii.gz"])
def test_truncated_voxel_data(tmp_path, nifti, volume, name):
    image, _ = volume
    path = nifti(tmp_path / name, image)
    blob = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(blob)
        path.write_bytes(gzip.compress(raw[:-1000])[:-8])  # a cut stream: no trailer either
        with pytest.raises(DataError, match=rf"{name}: truncated: expected {image.nbytes} bytes of voxel data, got "
                                            rf"{image.nbytes - 1000}$"):
            read_image(path)
    else:
        path.write_bytes(blob[:-1000])
        with pytest.raises(DataError, match=rf"truncated: expected {image.nbytes} bytes of voxel data, got "
                                            rf"{image.nbytes - 1000}$"):
            read_image(path)


def test_truncated_gzip_cut_mid_stream(tmp_path, nifti, volume):
    path = nifti(tmp_path / "cut.nii.gz", volume[0])
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"cut.nii.gz: truncated: expected 18432 bytes of voxel data, got \d+$"):
        read_image(path)


def test_truncated_header(tmp_path, nifti, volume):
    path = nifti(tmp_path / "h.nii", volume[0])
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"h.nii: truncated: header has 200 bytes, expected 348"):
        read_image(path)


def test_gzip_trailer_only_checked_when_streamed_to_the_end(tmp_path, nifti, volume):
    path = nifti(tmp_path / "crc.nii.gz", volume[0])
    blob = bytearray(path.read_bytes())
    blob[-6] ^= 0x10  # inside the CRC32 field: the voxels are intact
    path.write_bytes(bytes(blob))
    assert np.array_equal(read_image(path, verify_stream=False).array, volume[0])
    with pytest.raises(DataError, match=r"crc.nii.gz: corrupt gzip stream: CRC check failed"):
        read_image(path)


def _gzip_header_length(blob: bytes) -> int:
    flags, pos = blob[3], 10
    if flags & 0x04:
        pos += 2 + int.from_bytes(blob[pos:pos + 2], "little")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            pos = blob.index(b"\x00", pos) + 1
    return pos + (2 if flags & 0x02 else 0)


def test_single_bit_flips_in_the_compressed_payload_are_all_caught(tmp_path, nifti, volume):
    path = nifti(tmp_path / "flip.nii.gz", volume[0] * 7 + volume[1])
    blob = path.read_bytes()
    start = _gzip_header_length(blob)
    rng = np.random.default_rng(2024)
    # The last deflate byte may end in unused padding bits, so flips there can be harmless.
    positions = list(rng.integers(start, len(blob) - 9, size=16)) + list(rng.integers(len(blob) - 8, len(blob), 4))
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        with pytest.raises(DataError, match=r"flip.nii.gz: (corrupt gzip stream|truncated)"):
            read_image(path, verify_stream=True)


def test_bit_flips_in_the_gzip_header_never_load_wrong_voxels(tmp_path, nifti, volume):
    path = nifti(tmp_path / "head.nii.gz", volume[0])
    blob = path.read_bytes()
    for pos in range(_gzip_header_length(blob)):
        for bit in (0, 3, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            path.write_bytes(bytes(bad))
            try:
                got = read_image(path, verify_stream=True)
            except DataError:
                continue
            assert np.array_equal(got.array, volume[0]), f"byte {pos} bit {bit} loaded wrong voxels"


def test_empty_missing_directory_and_non_nifti_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.nii.gz: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.nii.gz")
    with pytest.raises(DataError, match=r"nothere.nii: no such file"):
        read_image(tmp_path / "nothere.nii")
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(DataError, match=r"dir.nii.gz: is a directory, expected a NIfTI file"):
        read_image(tmp_path / "dir.nii.gz")
    (tmp_path / "notes.nii").write_text("hello, this is not an image at all" * 20)
    with pytest.raises(DataError, match=r"notes.nii: not a NIfTI file: sizeof_hdr is \d+, expected 348"):
        read_image(tmp_path / "notes.nii")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, nifti, volume):
    path = nifti(tmp_path / "locked.nii.gz", volume[0])
    path.chmod(0)
    with pytest.raises(DataError, match=r"locked.nii.gz: cannot open the file: Permission denied"):
        read_image(path)


def test_absurd_dimensions_rejected_before_allocating(tmp_path):
    path = _raw(tmp_path / "huge.nii", _header(shape=(32767, 32767, 32767)), b"\x00" * 64)
    assert path.stat().st_size == 416
    with pytest.raises(DataError, match=r"huge.nii: header claims 35181150961663 voxels \(32767, 32767, 32767\), "
                                        r"over the budget of 2147483648 voxels"):
        read_image(path)
    within_budget = _raw(tmp_path / "big.nii", _header(shape=(1000, 1000, 1000)), b"\x00" * 64)
    gz = _raw(tmp_path / "big.nii.gz", _header(shape=(1000, 1000, 1000)), b"\x00" * 64)
    generous = ReadLimits(max_bytes=4 << 30)  # 2 GB is over the default budget, refused before the file size
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"big.nii: truncated: expected 2000000000 bytes of voxel data, got 64$"):
            read_image(within_budget, limits=generous)
        with pytest.raises(DataError, match=r"big.nii.gz: truncated or absurd header: expected 2000000000 bytes"):
            read_image(gz, limits=generous)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes allocated while refusing an absurd header"


@pytest.mark.parametrize("fields, message", [
    ({"dim": [3, -4, 4, 4, 1, 1, 1, 1]}, r"header dimensions \(-4, 4, 4\) are not all positive"),
    ({"dim": [0, 4, 4, 4, 1, 1, 1, 1]}, r"header dim\[0\] is 0, expected 1..7"),
    ({"dim": [9, 4, 4, 4, 1, 1, 1, 1]}, r"header dim\[0\] is 9, expected 1..7"),
    ({"dim": [2, 4, 4, 1, 1, 1, 1, 1]}, r"image has 2 dimensions \(4, 4\), expected at least 3"),
    ({"dim": [6, 4, 4, 4, 2, 2, 2, 1]}, r"image has 6 dimensions .* expected 3-D \(X,Y,Z\), 4-D"),
    ({"pixdim": [1, 0, 1, 1, 1, 1, 1, 1]}, r"pixdim\[1:4\] \(voxel size\) is \(0.0, 1.0, 1.0\), expected positive"),
    ({"pixdim": [1, 1, np.nan, 1, 1, 1, 1, 1]}, r"pixdim\[1:4\] \(voxel size\) is \(1.0, nan, 1.0\)"),
    ({"pixdim": [1, 1, 1, -2, 1, 1, 1, 1]}, r"pixdim\[1:4\] \(voxel size\) is \(1.0, 1.0, -2.0\)"),
    ({"vox_offset": 0}, r"vox_offset is 0, expected a whole number ≥ 352"),
    ({"vox_offset": 10**6}, r"vox_offset 1000000 is past the end of the file \(480 bytes\)"),
    ({"datatype": 32, "bitpix": 64}, r"datatype complex64 \(code 32\) is not supported; expected one of uint8"),
    ({"datatype": 128, "bitpix": 24}, r"datatype .* \(code 128\) is not supported"),
    ({"datatype": 999}, r"datatype code 999 is not a NIfTI datatype"),
    ({"magic": b"ni1"}, r"magic is b'ni1', expected b'n\+1'"),
    ({"qform_code": 0, "sform_code": 0}, r"qform_code and sform_code are both 0: the orientation is unknown"),
    ({"sform_code": 9}, r"sform_code is 9, expected 0..4"),
    ({"scl_slope": 1.0, "scl_inter": np.inf}, r"invalid scaling: .*inf"),
])
def test_bad_headers_named(tmp_path, fields, message):
    path = _raw(tmp_path / "bad.nii", _header(**fields), b"\x01\x00" * 64)
    with pytest.raises(DataError, match=rf"bad.nii: {message}"):
        read_image(path)


def test_vox_offset_past_the_decompressed_data(tmp_path):
    path = _raw(tmp_path / "off.nii.gz", _header(vox_offset=5000), b"\x01\x00" * 64)
    with pytest.raises(DataError, match=r"off.nii.gz: vox_offset 5000 is past the end of the data \(480 bytes"):
        read_image(path)


def test_voxel_budget_is_configurable(tmp_path, nifti, volume):
    path = nifti(tmp_path / "v.nii.gz", volume[0])
    with pytest.raises(DataError, match=r"header claims 9216 voxels \(24, 24, 16\), over the budget of 100 voxels"):
        read_image(path, limits=ReadLimits(max_voxels=100))
    with pytest.raises(DataError, match=r"18432 bytes of voxel data .* over the budget of 1000 bytes"):
        read_image(path, limits=ReadLimits(max_bytes=1000))
    with pytest.raises(ValueError, match="ReadLimits must be positive"):
        ReadLimits(max_voxels=0)


def test_non_finite_voxels_rejected_with_count_and_first_index(tmp_path, nifti, volume):
    image = volume[0].astype(np.float32)
    image[3, 4, 5] = np.nan
    image[10, 1, 2] = np.inf
    image[20, 20, 0] = -np.inf
    path = nifti(tmp_path / "nan.nii.gz", image)
    with pytest.raises(DataError, match=r"nan.nii.gz: non-finite voxels: 3 of 9216 \(NaN 1, \+inf 1, -inf 1\), "
                                        r"first at index \(3, 4, 5\); expected all finite"):
        read_image(path)
    assert np.isnan(read_image(path, check_finite=False).array[3, 4, 5])


def test_scaling_is_applied_and_gives_float(tmp_path, nifti, volume):
    path = nifti(tmp_path / "s.nii", volume[0], scl_slope=0.5, scl_inter=10.0)
    got = read_image(path).array
    assert got.dtype.kind == "f" and np.array_equal(got, volume[0] * 0.5 + 10.0)


@pytest.mark.parametrize("shape, expected", [
    ((6, 5, 4), (6, 5, 4)), ((6, 5, 4, 1), (6, 5, 4)), ((6, 5, 4, 1, 1), (6, 5, 4)),
    ((6, 5, 1), (6, 5, 1)), ((6, 5, 4, 3), (6, 5, 4, 3)), ((6, 5, 4, 1, 3), (6, 5, 4, 1, 3)),
])
def test_trailing_singleton_axes_squeezed_beyond_the_third_only(tmp_path, nifti, shape, expected):
    array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    got = read_image(nifti(tmp_path / "s.nii.gz", array, np.eye(4))).array
    assert got.shape == expected and np.array_equal(got.ravel(), array.ravel())


def test_qform_and_sform_disagreeing_named_with_both_orientations(tmp_path, nifti, volume, affine_lps):
    path = nifti(tmp_path / "qs.nii.gz", volume[0])
    img = nib.load(path)
    swapped = affine_lps(volume[0].shape) @ np.diag([-1.0, 1, 1, 1])  # a left-right swap
    img.set_sform(swapped, code=1)
    nib.save(img, tmp_path / "qs2.nii.gz")
    with pytest.raises(DataError, match=r"qs2.nii.gz: qform \(code 1\) and sform \(code 1\) disagree: qform is LPS "
                                        r".*; sform is RPS .*expected them equal within 0.001 mm"):
        read_image(tmp_path / "qs2.nii.gz")


@pytest.mark.parametrize("qcode, scode", [(1, 0), (0, 2), (2, 1)])
def test_either_or_both_agreeing_forms_are_used(tmp_path, nifti, volume, affine_lps, qcode, scode):
    path = nifti(tmp_path / "f.nii.gz", volume[0], qform_code=qcode, sform_code=scode)
    assert np.allclose(read_image(path).affine, affine_lps(volume[0].shape))


def test_write_image_round_trip_keeps_dtype_codes_and_geometry(tmp_path, nifti, volume, affine_lps):
    image, label = volume
    source = read_image(nifti(tmp_path / "src.nii.gz", image, qform_code=2, sform_code=1, scl_slope=1.0, scl_inter=0.0))
    out = write_image(tmp_path / "out" / "pred.nii.gz", label, source.affine, reference=source.header)
    back = read_image(out)
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, label)
    assert np.allclose(back.affine, affine_lps(image.shape)) and back.orientation == "LPS"
    header = nib.load(out).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (2, 1)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".part-")]


def test_write_image_with_a_shear_keeps_only_the_sform(tmp_path, volume):
    affine = np.eye(4)
    affine[0, 1] = 0.3
    out = write_image(tmp_path / "shear.nii", volume[1], affine)
    assert np.allclose(read_image(out).affine, affine)
    assert int(nib.load(out).header["qform_code"]) == 0


def test_image_properties():
    image = Image(np.zeros((2, 3, 4)), np.diag([2.0, 3.0, 1.5, 1.0]))
    assert image.shape == (2, 3, 4) and image.spacing == (2.0, 3.0, 1.5) and image.orientation == "RAS"


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_a_file_larger_than_its_header_says_is_read_with_a_warning(tmp_path, nifti, volume, name, caplog):
    """#23: a .nii followed by 2 GiB of zeros was accepted without a word (here 64 KiB do)."""
    path = nifti(tmp_path / name, volume)
    clean = read_image(path)
    assert "larger than its header says" not in caplog.text
    if name.endswith(".gz"):
        raw = gzip.decompress(path.read_bytes()) + bytes(65536)
        path.write_bytes(gzip.compress(raw))
    else:
        with open(path, "ab") as fh:
            fh.write(bytes(65536))
    with caplog.at_level(logging.WARNING):
        image = read_image(path)
    np.testing.assert_array_equal(image.array, clean.array)
    assert f"{path}: 65536 byte(s) after the voxel data its header describes" in caplog.text
    assert "the file is larger than its header says" in caplog.text
