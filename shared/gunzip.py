"""Inflating a whole .gz file held in memory, with the fastest inflater installed.

Streaming scans decompress every .nii.gz of a dataset once, and over a large cohort that is most
of their time. Measured on the BraTS cohort's FLAIR volumes (BENCHMARKS.md, "Scaling"), per volume:
zlib ~55 ms, ISA-L ~30-40 ms, libdeflate ~16 ms (labels: 7, 4-5 and 1.5 ms). So libdeflate (the
``deflate`` package, extra ``fast-read``) inflates when it is installed: one call into a buffer
sized by the gzip trailer's ISIZE, CRC-32 and size checked by libdeflate. Otherwise, and for any
file it refuses, the standard library's ``gzip.decompress`` does.

Both give the same bytes. libdeflate decodes only the first gzip member and refuses anything odd;
such files (corrupt, truncated, concatenated members whose first one is not the trailer's size)
go to ``gzip.decompress``, which decodes every member or raises the precise error (``zlib.error``,
``gzip.BadGzipFile``, ``EOFError``) that the callers turn into one-line messages. A file of two
concatenated members of the same size would inflate to the first member alone: no NIfTI writer
produces one, and the NIfTI reader would then find its data short.
"""
from __future__ import annotations

import gzip

# deflate never compresses better than ~1032:1: a trailer announcing more is lying (or the file is
# not one member); it goes to gzip.decompress, not into a huge allocation
GZIP_MAX_RATIO = 1032


def gunzip(blob: bytes) -> bytes:
    """The inflated bytes of a whole gzip file (see the module docstring for which inflater)."""
    try:
        import deflate
    except ImportError:
        return gzip.decompress(blob)
    size = int.from_bytes(blob[-4:], "little") if len(blob) >= 18 else -1
    if 0 <= size <= len(blob) * GZIP_MAX_RATIO:
        try:
            out = deflate.gzip_decompress(blob)
        except (deflate.DeflateError, ValueError):
            out = None
        if out is not None and len(out) == size:
            return out
    return gzip.decompress(blob)


def inflater_name() -> str:
    """Which inflater :func:`gunzip` uses here (benchmarks record it)."""
    try:
        import deflate  # noqa: F401
    except ImportError:
        return "zlib"
    return "libdeflate"
