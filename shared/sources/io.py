"""Reading scans: NIfTI with one-line errors, and the raw -> (S, R, C) [0, 1] preprocessing."""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError
from shared.gunzip import GZIP_MAX_RATIO, gunzip
from shared.intensity import apply_intensity

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# A header can claim any size; it is checked before any voxel is read or allocated.
MAX_VOXELS_ENV = "EXEMPLAR_SAM_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 1 << 30  # ~1.07e9 voxels (4 GB as float32); a 512x512x1000 CT is 2.6e8
# GZIP_MAX_RATIO: deflate never compresses better than ~1032:1, so a .nii.gz smaller than its voxel
# data / 1032 cannot hold that data (a 1 KB file claiming 1200^3 voxels is truncated or lying).



def _as_3d(path, data):
    """A 3D volume: a trailing singleton 4th axis is dropped, anything else but 3D is refused."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    return data

def strip_nifti_suffix(name: str) -> str | None:
    """``img0001.nii.gz`` -> ``img0001``; None when the name is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_nifti(path: str | Path) -> tuple[np.ndarray, Any]:
    """Read a NIfTI file fully; returns (array in NIfTI order, nibabel image).

    Any failure (missing, not a NIfTI, truncated gzip, short data) becomes a one-line DataError
    naming the file. The array keeps the on-disk dtype when there is no scaling.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        check_nifti_size(path, img)
        data = np.asanyarray(img.dataobj)
    except (ImageFileError, EOFError, OSError, zlib.error, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {reason})") from None
    data = _as_3d(path, data)
    return data, img


def read_nifti_array(path: str | Path) -> np.ndarray:
    """The voxel array of ``read_nifti(path)`` alone (same dtype, values and memory order), read in
    one piece: the whole file, one gzip.decompress, the header, a zero-copy (read-only) view.

    Why: nibabel streams a .nii.gz through GzipFile in small blocks and copies the result; this
    costs ~20-30 % of a BraTS volume's read time on top of the decompression itself (streaming
    scans read every volume of a dataset once). Scaled data (scl_slope/scl_inter), a non-native
    byte order, NIfTI-2 or .hdr/.img pairs go through :func:`read_nifti` unchanged. The gzip
    stream is inflated by the fastest inflater installed (:mod:`shared.gunzip`: with the extra
    ``fast-read``, libdeflate, ~3x zlib on BraTS volumes; same bytes, CRC checked).
    """
    import gzip
    import io

    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)[0]
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        blob = path.read_bytes()
        if path.name.endswith(".gz"):
            blob = gunzip(blob)
        if len(blob) < 348 or int.from_bytes(blob[:4], "little") != 348:  # NIfTI-1, little-endian
            return read_nifti(path)[0]
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(blob[:348]))
        slope, inter = header.get_slope_inter()
        dtype = header.get_data_dtype()
        if slope not in (None, 1.0) or inter not in (None, 0.0) or not dtype.isnative or dtype.hasobject:
            return read_nifti(path)[0]
        shape = tuple(int(n) for n in header.get_data_shape())
        offset = int(header.get_data_offset())
        count = math.prod(shape)  # Python ints: a lying header cannot overflow the check
        limit = max_voxels()
        if count > limit:
            raise DataError(f"{path}: NIfTI header claims shape {shape} = {count:,} voxels, more than the limit "
                            f"{limit:,} (set ${MAX_VOXELS_ENV} to raise it)")
        if offset + count * dtype.itemsize > len(blob):
            raise EOFError(f"{len(blob) - offset} data bytes, the header announces {count * dtype.itemsize}")
        data = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    except (HeaderDataError, EOFError, OSError, zlib.error, ValueError, TypeError, gzip.BadGzipFile) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {reason})") from None
    data = _as_3d(path, data)
    return data


def nifti_shape(path: str | Path) -> tuple[int, int, int]:
    """The NIfTI array shape from the header only (no voxel data read)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
        shape = tuple(int(v) for v in img.shape)
    except (ImageFileError, EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: unreadable NIfTI header ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    check_nifti_size(Path(path), img)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    return shape  # type: ignore[return-value]


def max_voxels() -> int:
    """The largest volume a header may claim: ``$EXEMPLAR_SAM_MAX_VOXELS`` or DEFAULT_MAX_VOXELS."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise DataError(f"${MAX_VOXELS_ENV}={raw!r}: expected a number of voxels") from None
    if value < 1:
        raise DataError(f"${MAX_VOXELS_ENV}={raw!r}: must be positive")
    return value


def check_nifti_size(path: Path, img: Any) -> None:
    """DataError when the header's array size cannot be right, before anything is allocated.

    Checks the voxel count against :func:`max_voxels` and the voxel bytes against the file size
    (uncompressed: offset + data must fit; gzip: at most GZIP_MAX_RATIO times the file size).
    """
    shape = tuple(int(v) for v in img.shape)
    if any(v < 1 for v in shape):
        raise DataError(f"{path}: NIfTI header claims an empty array of shape {shape}")
    voxels = math.prod(shape)
    limit = max_voxels()
    if voxels > limit:
        raise DataError(f"{path}: NIfTI header claims shape {shape} = {voxels:,} voxels, more than the limit "
                        f"{limit:,} (set ${MAX_VOXELS_ENV} to raise it)")
    try:
        itemsize = int(img.get_data_dtype().itemsize)
        offset = int(img.header.get_data_offset())
        size = path.stat().st_size
    except (AttributeError, TypeError, ValueError, OSError):
        return  # not a plain NIfTI-1/2 header: leave the read to nibabel
    need = offset + voxels * itemsize
    gz = path.name.endswith(".gz")
    if need > size * (GZIP_MAX_RATIO if gz else 1):
        what = f"{size:,} bytes{' compressed' if gz else ''}"
        raise DataError(f"{path}: truncated NIfTI or wrong header: shape {shape} of {img.get_data_dtype()} needs "
                        f"{need:,} bytes, the file has {what}")


def check_finite(array: np.ndarray, file: str | Path) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataError(f"{file}: image contains {bad} NaN or Inf voxels")


def to_slice_first(array: np.ndarray) -> np.ndarray:
    """NIfTI (i, j, k) = (col, row, slice) order -> (slice, row, col), contiguous."""
    return np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0))


def preprocess_raw(raw: np.ndarray, intensity: dict, *, name: str = "scan") -> np.ndarray:
    """A raw scan as read from NIfTI (i, j, k order) -> float32 (S, R, C) in [0, 1].

    Transposes (2, 1, 0) and applies the intensity preset, exactly as the sources do, so a new
    scan given to `train predict` is preprocessed like the training data. ``name`` is used in the
    error message when the scan holds NaN/Inf or is not 3D.
    """
    raw = np.asarray(raw)
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(f"{name}: expected a 3D volume, got shape {tuple(raw.shape)}")
    check_finite(raw, name)
    return apply_intensity(to_slice_first(raw), intensity)


def nifti_geometry(img: Any) -> tuple[tuple[float, float, float], np.ndarray]:
    """(spacing along (S, R, C) = zooms reversed, 4x4 affine) of a nibabel image."""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    return (zooms[2], zooms[1], zooms[0]), affine
