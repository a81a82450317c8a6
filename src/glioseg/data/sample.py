"""``glioseg sample OUT``: the bundled real case, copied where a user can see and use it.

The case (``Brats18_TCIA03_265_1``, TCGA on TCIA, CC BY 3.0; ``assets/sample/NOTICE.md``) ships
as package data. A copy lands in ``OUT/<case>/`` as a BraTS-layout case folder with the notice
beside the images, so ``OUT`` is a dataset that ``glioseg verify / predict / evaluate`` read.
Every file is checked against ``assets/sample/SHA256SUMS`` on the way out; the folder appears
only once complete (written under a ``.part-`` name, then renamed) and is never overwritten.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from glioseg.data.errors import DataError


SAMPLE_CASE = "Brats18_TCIA03_265_1"
NOTICE = "NOTICE.md"
SUMS = "SHA256SUMS"


def sample_root():
    """The packaged sample folder (a ``Traversable``: a directory in a wheel or a checkout)."""
    return resources.files("glioseg") / "assets" / "sample"


def expected_sums(root=None) -> dict[str, str]:
    """``{relative path: sha256}`` from the packaged ``SHA256SUMS``."""
    root = root or sample_root()
    sums = {}
    for line in (root / SUMS).read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest:
            sums[name] = digest
    return sums


def _copy_verified(source, target: Path, digest: str) -> None:
    sha = hashlib.sha256()
    with source.open("rb") as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            sha.update(block)
            dst.write(block)
    if sha.hexdigest() != digest:
        raise DataError(str(source), f"the packaged sample file differs from {SUMS} "
                                f"({sha.hexdigest()[:16]}... vs {digest[:16]}...): the installation is damaged")


def write_sample(out: Path | str, root=None) -> Path:
    """Copy the sample case into ``out/<case>/`` (images, label, NOTICE.md); returns that folder."""
    out, root = Path(out), root or sample_root()
    final = out / SAMPLE_CASE
    if final.exists():
        raise DataError(final, "already exists; glioseg sample does not overwrite (remove it or choose another OUT)")
    out.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".part-{SAMPLE_CASE}.", dir=out))
    try:
        for name, digest in expected_sums(root).items():
            _copy_verified(root.joinpath(*name.split("/")), part / Path(name).name, digest)
        (part / NOTICE).write_text((root / NOTICE).read_text())
        os.chmod(part, 0o777 & ~_umask())
        os.rename(part, final)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return final


def _umask() -> int:
    # mkdtemp creates 0700; a copy for the user gets the usual mode.
    mask = os.umask(0)
    os.umask(mask)
    return mask
