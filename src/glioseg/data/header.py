"""NIfTI header checks made before a single voxel is allocated, and the geometry policy.

nibabel accepts absurd headers (32767³ dimensions in a 416-byte file, negative sizes), fixes
others silently (a zero pixdim becomes 1) and picks the sform over a disagreeing qform without
a word. Here the raw header bytes are parsed without fixes and checked against a budget and
the file size first; :func:`header_affine` applies glioseg's documented orientation policy:

* at least one of qform and sform must be set (code > 0), otherwise the orientation is unknown;
* when both are set they must agree within :data:`AFFINE_TOL_MM` (translation) and
  :data:`AFFINE_TOL_MATRIX` (matrix entries), otherwise readers disagree (nibabel and
  SimpleITK pick different ones) and glioseg refuses to guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from glioseg.data.budget import DEFAULT_MAX_IMAGE_MB, MAX_IMAGE_MB_ENV, max_image_bytes
from glioseg.data.errors import DataError

AFFINE_TOL_MM = 1e-3
AFFINE_TOL_MATRIX = 1e-4
# Deflate cannot expand data more than about 1032:1, which bounds the voxel bytes a
# .nii.gz of a given size can hold without decompressing it.
MAX_DEFLATE_RATIO = 1032
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (
    np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float32, np.float64,
))
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}


@dataclass(frozen=True)
class ReadLimits:
    """Budget a header may claim before reading is refused (defaults: 2³¹ voxels, 1 GiB).

    ``from_env`` takes the byte budget from :func:`glioseg.data.budget.max_image_bytes`
    (``--max-image-mb``, ``$GLIOSEG_MAX_IMAGE_MB``).
    """

    max_voxels: int = 2**31
    max_bytes: int = DEFAULT_MAX_IMAGE_MB << 20

    def __post_init__(self):
        if self.max_voxels < 1 or self.max_bytes < 1:
            raise ValueError(f"ReadLimits must be positive; got {self}")

    @classmethod
    def from_env(cls) -> "ReadLimits":
        return cls(max_bytes=max_image_bytes())


@dataclass(frozen=True)
class Layout:
    """Where and how the voxels are stored: shape as on disk (Fortran order), dtype, offset."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_size(path, first4: bytes) -> tuple[int, str]:
    """``sizeof_hdr`` and byte order from the first four bytes (348: NIfTI-1, 540: NIfTI-2)."""
    if len(first4) < 4:
        raise DataError(path, f"truncated: header has {len(first4)} bytes, expected at least 348")
    for order in ("<", ">"):
        size = int(np.frombuffer(first4, dtype=f"{order}i4")[0])
        if size in _HEADER_CLASSES:
            return size, order
    found = int(np.frombuffer(first4, dtype="<i4")[0])
    raise DataError(path, f"not a NIfTI file: sizeof_hdr is {found}, expected 348 (NIfTI-1) or 540 (NIfTI-2)")


def parse_header(path, raw: bytes, order: str) -> nib.Nifti1Header:
    """The header exactly as stored (``check=False``: nibabel's silent fixes are not applied)."""
    klass = _HEADER_CLASSES[len(raw)]
    header = klass(raw, endianness=order, check=False)
    magic = bytes(header["magic"].item()).split(b"\0")[0]
    if magic not in (b"n+1", b"n+2"):
        raise DataError(path, f"magic is {magic!r}, expected b'n+1' or b'n+2' (a single-file NIfTI); "
                              "separate .hdr/.img pairs are not supported")
    return header


def _shape(path, header) -> tuple[int, ...]:
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise DataError(path, f"header dim[0] is {dim[0]}, expected 1..7 (number of dimensions)")
    shape = tuple(dim[1:dim[0] + 1])
    if any(d < 1 for d in shape):
        raise DataError(path, f"header dimensions {shape} are not all positive")
    if len(shape) < 3:
        raise DataError(path, f"image has {len(shape)} dimensions {shape}, expected at least 3 (X, Y, Z)")
    squeezed = squeeze_trailing(shape)
    if len(squeezed) > 5:
        raise DataError(path, f"image has {len(squeezed)} dimensions {shape} after squeezing trailing "
                              "singleton axes, expected 3-D (X,Y,Z), 4-D (X,Y,Z,C) or 5-D (X,Y,Z,1,C)")
    return shape


def squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond the third: (X,Y,Z,1) → (X,Y,Z); (X,Y,1) stays."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _dtype(path, header) -> np.dtype:
    try:
        dtype = header.get_data_dtype()
    except (HeaderDataError, KeyError):
        raise DataError(path, f"datatype code {int(header['datatype'])} is not a NIfTI datatype") from None
    if dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise DataError(path, f"datatype {dtype} (code {int(header['datatype'])}) is not supported; "
                              f"expected one of {names}")
    return dtype


def check_layout(path, header, limits: ReadLimits) -> Layout:
    """Shape, dtype, voxel sizes and data offset of ``header``, checked against ``limits``."""
    shape = _shape(path, header)
    dtype = _dtype(path, header)
    voxels = math.prod(shape)
    if voxels > limits.max_voxels:
        raise DataError(path, f"header claims {voxels} voxels {shape}, over the budget of "
                              f"{limits.max_voxels} voxels")
    if voxels * dtype.itemsize > limits.max_bytes:
        raise DataError(path, f"header claims {voxels * dtype.itemsize} bytes of voxel data {shape} {dtype} "
                              f"({voxels * dtype.itemsize / 2**20:.1f} MiB), over the budget of {limits.max_bytes} "
                              f"bytes ({limits.max_bytes / 2**20:.1f} MiB per image; if the file is real, raise it "
                              f"with glioseg --max-image-mb or ${MAX_IMAGE_MB_ENV})")
    pixdim = [float(p) for p in header["pixdim"][1:4]]
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        raise DataError(path, f"pixdim[1:4] (voxel size) is {tuple(pixdim)}, expected positive finite values")
    offset = float(header["vox_offset"])
    minimum = len(header.binaryblock) + 4
    if not math.isfinite(offset) or offset < minimum or offset != int(offset):
        raise DataError(path, f"vox_offset is {offset:g}, expected a whole number ≥ {minimum} (after the header)")
    return Layout(shape, dtype, int(offset))


def check_size(path, layout: Layout, file_bytes: int, compressed: bool) -> None:
    """Refuse, before allocating, a header whose data cannot fit in a file of ``file_bytes``."""
    if compressed:
        most = file_bytes * MAX_DEFLATE_RATIO
        if layout.offset + layout.nbytes > most:
            raise DataError(path, f"truncated or absurd header: expected {layout.nbytes} bytes of voxel data "
                                  f"{layout.shape} at offset {layout.offset}, but {file_bytes} bytes of gzip "
                                  f"decompress to at most {most}")
        return
    if layout.offset > file_bytes:
        raise DataError(path, f"vox_offset {layout.offset} is past the end of the file ({file_bytes} bytes)")
    got = file_bytes - layout.offset
    if got < layout.nbytes:
        raise DataError(path, f"truncated: expected {layout.nbytes} bytes of voxel data, got {got}")


def orientation(affine: np.ndarray) -> str:
    """Axis codes such as ``'LPS'`` of a 4×4 affine."""
    return "".join(nib.aff2axcodes(affine))


def affines_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two affines match within 1e-4 (matrix) and 1e-3 mm (translation)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.abs(a[:3, :3] - b[:3, :3]).max() <= AFFINE_TOL_MATRIX
                and np.abs(a[:3, 3] - b[:3, 3]).max() <= AFFINE_TOL_MM)


def describe_affine(affine: np.ndarray) -> str:
    """One line: orientation, spacing, origin and the 3×3 matrix (for error messages)."""
    a = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    fmt = {"float_kind": lambda v: f"{v:.6g}"}
    return (f"{orientation(a)} spacing {np.array2string(spacing, formatter=fmt, separator=', ')} mm, "
            f"origin {np.array2string(a[:3, 3], formatter=fmt, separator=', ')}, "
            f"matrix {np.array2string(a[:3, :3], formatter=fmt, separator=', ')}".replace("\n", ""))


def _valid(path, affine: np.ndarray, which: str) -> np.ndarray:
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, f"{which} is singular or not finite: {affine.tolist()}; expected an invertible affine")
    return affine


def _qform(path, header) -> np.ndarray:
    try:
        return header.get_qform()
    except (HeaderDataError, ValueError) as exc:  # nibabel: "w2 should be positive" for |(b, c, d)| > 1
        b, c, d = (float(header[f"quatern_{k}"]) for k in "bcd")
        raise DataError(path, f"qform is invalid: {exc} (quatern_b, c, d = {b:g}, {c:g}, {d:g}); expected a "
                              "unit quaternion, b² + c² + d² ≤ 1") from None


def header_affine(path, header) -> np.ndarray:
    """The voxel → world affine under glioseg's qform/sform policy (see the module docstring)."""
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    for name, code in (("qform_code", qcode), ("sform_code", scode)):
        if not 0 <= code <= 4:
            raise DataError(path, f"{name} is {code}, expected 0..4")
    if qcode == 0 and scode == 0:
        raise DataError(path, "qform_code and sform_code are both 0: the orientation is unknown; "
                              "expected at least one of them set (> 0)")
    qform = _valid(path, _qform(path, header), "qform") if qcode else None
    sform = _valid(path, header.get_sform(), "sform") if scode else None
    if qform is not None and sform is not None and not affines_agree(qform, sform):
        raise DataError(path, f"qform (code {qcode}) and sform (code {scode}) disagree: qform is "
                              f"{describe_affine(qform)}; sform is {describe_affine(sform)}; expected them "
                              f"equal within {AFFINE_TOL_MM} mm and {AFFINE_TOL_MATRIX} (readers pick "
                              "different ones, so glioseg refuses to guess)")
    return sform if sform is not None else qform
