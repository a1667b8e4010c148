"""shared.gunzip: libdeflate when installed, the standard library for anything it refuses; same bytes."""
from __future__ import annotations

import gzip
import sys
import zlib

import numpy as np
import pytest

from shared import gunzip as gz
from shared.sources.io import read_nifti, read_nifti_array

deflate = pytest.importorskip("deflate", reason="the fast-read extra (deflate) is not installed")


def _payload(seed: int, n: int = 200_000) -> bytes:
    rng = np.random.default_rng(seed)  # compressible, like a scan: runs of zeros and a few levels
    return np.where(rng.random(n) < 0.6, 0, rng.integers(0, 40, n)).astype(np.uint8).tobytes()


def test_the_same_bytes_as_gzip_and_libdeflate_is_used(monkeypatch) -> None:
    data = _payload(1)
    blob = gzip.compress(data)
    calls = []
    real = deflate.gzip_decompress
    monkeypatch.setattr(deflate, "gzip_decompress", lambda b: calls.append(len(b)) or real(b))
    assert gz.gunzip(blob) == data and calls == [len(blob)]
    assert gz.inflater_name() == "libdeflate"


def test_files_libdeflate_refuses_go_to_gzip(monkeypatch) -> None:
    a, b = _payload(2), _payload(3, 50_000)
    two_members = gzip.compress(a) + gzip.compress(b)  # libdeflate decodes the first member only
    assert gz.gunzip(two_members) == a + b
    lying = bytearray(gzip.compress(a))
    lying[-4:] = (1 << 31).to_bytes(4, "little")  # a trailer claiming 2 GB: never allocated
    with pytest.raises(gzip.BadGzipFile):
        gz.gunzip(bytes(lying))
    bad_crc = bytearray(gzip.compress(a))
    bad_crc[-6] ^= 1
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gz.gunzip(bytes(bad_crc))
    with pytest.raises(EOFError):
        gz.gunzip(gzip.compress(a)[:-100])
    with pytest.raises(gzip.BadGzipFile):
        gz.gunzip(b"not gzip at all, really")


def test_without_deflate_the_standard_library_inflates(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "deflate", None)  # import deflate -> ImportError
    data = _payload(4)
    assert gz.gunzip(gzip.compress(data)) == data and gz.inflater_name() == "zlib"
    with pytest.raises(zlib.error):
        gz.gunzip(gzip.compress(data)[:40] + b"\xff" * 60)


def test_nifti_reads_agree_on_real_files(brats_root, tmp_path) -> None:
    """The one-piece reader (libdeflate) and nibabel (zlib) give the same voxels, also for a file
    written as two gzip members."""
    import nibabel as nib

    case = brats_root / "HGG" / "Brats18_2013_3_1" if (brats_root / "HGG").is_dir() else None
    files = sorted((case or brats_root).rglob("*.nii.gz"))[:2]
    assert files, f"no .nii.gz under {brats_root}"
    for f in files:
        a, b = read_nifti(f)[0], read_nifti_array(f)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    raw = gzip.decompress(files[0].read_bytes())
    split = tmp_path / "two_members.nii.gz"
    split.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert np.array_equal(read_nifti_array(split), np.asanyarray(nib.load(str(files[0])).dataobj))
