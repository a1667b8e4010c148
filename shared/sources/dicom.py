"""DICOM series in: one folder -> one volume, read the same way by synthesis, evaluation and prediction.

>>> raw, affine, series = read_dicom_series("CT_folder")        # raw: NIfTI order (i, j, k)
>>> raw.shape == series.shape_ijk; series.files[k]               # the file of slice k

What "the same volume as a NIfTI" means here (DESIGN.md, "Volume"): the array is returned in the
NIfTI index order (i, j, k) = (column, row, slice), exactly like :func:`shared.sources.io.read_nifti`,
so ``to_slice_first(raw)[k]`` is the k-th slice's pixel array as stored (rows, columns) and
``preprocess_raw(raw, preset)`` preprocesses it like any NIfTI scan. The affine is RAS (nibabel's
convention): the DICOM patient space is LPS, so ``affine = diag(-1, -1, 1, 1) @ lps``, where the
LPS affine's columns are ImageOrientationPatient's row direction x PixelSpacing[1] (along i =
columns), its column direction x PixelSpacing[0] (along j = rows), the step between consecutive
slice positions (along k) and the first slice's ImagePositionPatient.

- Slices are ordered by ImagePositionPatient projected on the slice normal (row x column direction),
  ascending; file names and InstanceNumber are ignored.
- The slice spacing comes from the positions (SliceThickness may differ and is not used).
- RescaleSlope / RescaleIntercept are applied per file. The result keeps the stored integer dtype when
  every slope is 1 and every intercept 0; otherwise it is int16 (or int32) when every value is a whole
  number in that range (CT in HU), else float32.
- Only files with the DICOM preamble (``DICM``) are considered; DICOMDIR files and non-image objects
  (SEG, RTSTRUCT, SR, presentation states, ...) are skipped, so a SEG may sit beside the slices.
- Every problem is a one-line :class:`DataError` naming the file: several series without a choice
  (the message lists them), missing slices, uneven spacing, mixed sizes / spacings / orientations,
  duplicate positions, compressed pixel data without an installed decoder, multi-frame or colour
  images, missing geometry tags, unreadable files.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError, exception_summary
from shared.sources.io import MAX_VOXELS_ENV, max_voxels

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RAS = LPS_TO_RAS @ LPS (and back: the matrix is its own inverse)."""

# SOP classes and modalities that hold no image slices of a series (skipped when a folder is read)
_NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC",
                                   "PLAN", "FID", "RWV"})
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DIRECTION_TOL = 1e-4  # direction cosines / pixel spacings that differ by more: a different geometry
_GAP_REL_TOL = 0.01  # slice gaps within 1 % of the series' spacing count as even


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a folder (headers only)."""

    series_uid: str
    modality: str
    description: str
    series_number: int | None
    files: tuple[Path, ...]  # sorted by name (not slice order)

    def line(self) -> str:
        """``UID (CT, 30 files, #2 'abdomen')``, for one-line messages."""
        number = f", #{self.series_number}" if self.series_number is not None else ""
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.series_uid} ({self.modality or '?'}, {len(self.files)} files{number}{desc})"


@dataclass
class DicomSeries:
    """What :func:`read_dicom_series` read besides the voxels: the series in slice order.

    ``datasets`` are the files' headers without pixel data, in slice order (k): what a DICOM SEG of
    this volume references (``shared.dicom_seg.write_dicom_seg``)."""

    folder: Path
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    files: tuple[Path, ...]  # slice k's file, in slice order
    sop_instance_uids: tuple[str, ...]  # in slice order
    datasets: tuple[Any, ...] = field(repr=False)  # pydicom Datasets (headers), in slice order
    affine: np.ndarray = field(repr=False)  # 4x4 RAS, index (i, j, k) = (col, row, slice) -> mm
    lps_affine: np.ndarray = field(repr=False)  # the same in DICOM patient coordinates (LPS)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm along (slices, rows, cols), as Volume.spacing
    shape_ijk: tuple[int, int, int] = (0, 0, 0)  # (columns, rows, slices) = the returned array's shape
    slice_thickness: float | None = None  # as recorded (may differ from the spacing)

    @property
    def num_slices(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Slice-first (S, R, C) shape, as ``Volume.image``."""
        i, j, k = self.shape_ijk
        return (k, j, i)


# ------------------------------------------------------------------------------------------ headers
def _read_header(path: Path):
    """The header of a DICOM file (no pixel data); None when the file is not DICOM (no preamble)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise DataError(f"{path}: unreadable DICOM file ({exception_summary(exc)})") from None


def _is_image(ds, path: Path) -> bool:
    """Whether a DICOM file is a slice to read (False: DICOMDIR, SEG, SR, ...); a file that says
    nothing of its series (truncated, or not an instance at all) is an error, not silently left out."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(getattr(meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
        return False
    if str(getattr(ds, "Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        raise DataError(f"{path}: incomplete DICOM file (no SeriesInstanceUID / SOPInstanceUID): truncated?")
    return True


def _candidate_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, sorted), hidden files and folders excluded."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(p.startswith(".") for p in rel) or not path.is_file():
            continue
        out.append(path)
    return out


def _scan(folder: Path, *, skip: Iterable[Path] = ()) -> dict[str, list[tuple[Path, Any]]]:
    """{series uid: [(file, header), ...]} of the image files under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM folder not found" if not folder.exists()
                        else f"{folder}: expected a folder of DICOM files, got a file")
    skipped = {Path(p).resolve() for p in skip}
    series: dict[str, list[tuple[Path, Any]]] = {}
    files = [p for p in _candidate_files(folder) if p.resolve() not in skipped]
    for path in files:
        ds = _read_header(path)
        if ds is None or not _is_image(ds, path):
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if not series:
        raise DataError(f"{folder}: no DICOM image files in the folder ({len(files)} files looked at; "
                        "files need the DICM preamble)")
    return series


def _summary(uid: str, members: list[tuple[Path, Any]]) -> SeriesSummary:
    ds = members[0][1]
    number = getattr(ds, "SeriesNumber", None)
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return SeriesSummary(uid, str(getattr(ds, "Modality", "") or ""), " ".join(str(getattr(ds, "SeriesDescription", "") or "").split()),
                         number, tuple(p for p, _ in members))


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """The image series in a folder (headers only), sorted by series number then UID."""
    found = _scan(Path(folder))
    out = [_summary(uid, members) for uid, members in found.items()]
    return sorted(out, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))


def _choose(folder: Path, found: dict[str, list[tuple[Path, Any]]], series_uid: str | None,
            choose_hint: str) -> tuple[str, list[tuple[Path, Any]]]:
    if series_uid is not None:
        if series_uid not in found:
            listed = "; ".join(s.line() for s in sorted((_summary(u, m) for u, m in found.items()),
                                                         key=lambda s: s.series_uid))
            raise DataError(f"{folder}: no series {series_uid} in the folder (found: {listed})")
        return series_uid, found[series_uid]
    if len(found) > 1:
        summaries = sorted((_summary(u, m) for u, m in found.items()),
                           key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
        raise DataError(f"{folder}: {len(found)} DICOM series in the folder, {choose_hint}: "
                        + "; ".join(s.line() for s in summaries))
    uid = next(iter(found))
    return uid, found[uid]


# ----------------------------------------------------------------------------------------- geometry
def _floats(ds, path: Path, tag: str, n: int) -> np.ndarray:
    value = getattr(ds, tag, None)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.isfinite(out).all():
        got = "missing" if value is None else f"got {value!r}"
        raise DataError(f"{path}: {tag} must be {n} numbers ({got}); cannot place the slice in space")
    return out


def _int(ds, path: Path, tag: str, default: int | None = None) -> int:
    value = getattr(ds, tag, None)
    if value in (None, ""):
        if default is not None:
            return default
        raise DataError(f"{path}: {tag} missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {tag} is not an integer ({value!r})") from None


def _rescale(ds, path: Path) -> tuple[float, float]:
    out = []
    for tag, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = getattr(ds, tag, None)
        try:
            v = float(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            v = float("nan")
        if not math.isfinite(v) or (tag == "RescaleSlope" and v == 0):
            raise DataError(f"{path}: {tag} {value!r} is not a usable number")
        out.append(v)
    return out[0], out[1]


def _fmt_mm(x: float) -> str:
    return f"{x:.4g} mm"


def _geometry(folder: Path, members: list[tuple[Path, Any]]):
    """Check one series' headers and order them; returns (ordered members, lps affine, spacing, thickness)."""
    first_path, first = members[0]
    rows0, cols0 = _int(first, first_path, "Rows"), _int(first, first_path, "Columns")
    iop0 = _floats(first, first_path, "ImageOrientationPatient", 6)
    ps0 = _floats(first, first_path, "PixelSpacing", 2)
    row_dir, col_dir = iop0[:3], iop0[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
            or abs(float(row_dir @ col_dir)) > 1e-3):
        raise DataError(f"{first_path}: ImageOrientationPatient {list(iop0)} is not two orthogonal unit vectors")
    if (ps0 <= 0).any():
        raise DataError(f"{first_path}: PixelSpacing {list(ps0)} must be positive")
    normal = np.cross(row_dir, col_dir)
    positions = []
    for path, ds in members:
        frames = _int(ds, path, "NumberOfFrames", 1)
        if frames != 1:
            raise DataError(f"{path}: multi-frame image ({frames} frames); only series of single-frame "
                            "slices are read")
        samples = _int(ds, path, "SamplesPerPixel", 1)
        if samples != 1:
            raise DataError(f"{path}: {samples} samples per pixel (colour); expected a greyscale image")
        rows, cols = _int(ds, path, "Rows"), _int(ds, path, "Columns")
        if (rows, cols) != (rows0, cols0):
            raise DataError(f"{path}: mixed slice sizes in series {first.SeriesInstanceUID}: {rows} x {cols}, "
                            f"{first_path.name} is {rows0} x {cols0}")
        iop = _floats(ds, path, "ImageOrientationPatient", 6)
        if np.abs(iop - iop0).max() > _DIRECTION_TOL:
            raise DataError(f"{path}: ImageOrientationPatient {list(iop)} differs from {first_path.name}'s "
                            f"{list(iop0)} (mixed orientations in one series)")
        ps = _floats(ds, path, "PixelSpacing", 2)
        if np.abs(ps - ps0).max() > _DIRECTION_TOL * max(1.0, float(ps0.max())):
            raise DataError(f"{path}: PixelSpacing {list(ps)} differs from {first_path.name}'s {list(ps0)} "
                            "(mixed pixel spacings in one series)")
        positions.append(_floats(ds, path, "ImagePositionPatient", 3))
    pos = np.array(positions)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    members = [members[i] for i in order]
    pos, along = pos[order], along[order]
    names = [p for p, _ in members]
    n = len(members)
    thickness = None
    value = getattr(first, "SliceThickness", None)
    try:
        thickness = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    if n == 1:
        step_len = None
        for tag in ("SpacingBetweenSlices", "SliceThickness"):
            value = getattr(first, tag, None)
            try:
                step_len = float(value) if value not in (None, "") else None
            except (TypeError, ValueError):
                step_len = None
            if step_len and step_len > 0:
                break
        step = normal * (step_len if step_len and step_len > 0 else 1.0)
    else:
        gaps = np.diff(along)
        for g_index, gap in enumerate(gaps):
            if gap <= 1e-3:
                raise DataError(f"{names[g_index + 1]}: same slice position as {names[g_index].name} "
                                f"({_fmt_mm(float(along[g_index]))} along the slice normal): two slices in one "
                                "place (several acquisitions or echoes in one series?)")
        spacing = float(np.median(gaps))
        tol = max(_GAP_REL_TOL * spacing, 1e-3)
        for g_index, gap in enumerate(gaps):
            if abs(gap - spacing) <= tol:
                continue
            ratio = gap / spacing
            between = f"between {names[g_index].name} and {names[g_index + 1].name}"
            if round(ratio) >= 2 and abs(gap - round(ratio) * spacing) <= tol * round(ratio):
                missing = int(round(ratio)) - 1
                raise DataError(f"{names[g_index + 1]}: {missing} missing slice{'s' if missing > 1 else ''} {between} "
                                f"(gap {_fmt_mm(gap)}, the series' spacing is {_fmt_mm(spacing)})")
            raise DataError(f"{names[g_index + 1]}: uneven slice spacing: {_fmt_mm(gap)} {between}, "
                            f"{_fmt_mm(spacing)} elsewhere in the series")
        step = (pos[-1] - pos[0]) / (n - 1)
        off_line = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
        worst = int(np.argmax(off_line))
        if off_line[worst] > tol:
            raise DataError(f"{names[worst]}: slice position {list(pos[worst])} is {_fmt_mm(float(off_line[worst]))} off "
                            "the line through the other slices' positions")
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]  # i = column index moves along the row direction
    lps[:3, 1] = col_dir * ps0[0]  # j = row index moves along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    spacing_src = (float(np.linalg.norm(step)), float(ps0[0]), float(ps0[1]))
    return members, lps, spacing_src, thickness, (rows0, cols0)


# --------------------------------------------------------------------------------------------- pixels
def _check_decodable(path: Path, ds) -> None:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None or not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DataError(f"{path}: pixel data in transfer syntax {uid} ({uid.name}), which pydicom cannot "
                        "decode") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise DataError(f"{path}: pixel data compressed as {uid.name} ({uid}) and no decoder for it is "
                        f"installed (install one of: {needs})")


def _read_pixels(path: Path) -> tuple[np.ndarray, Any]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise DataError(f"{path}: unreadable DICOM file ({exception_summary(exc)})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: no pixel data in the file")
    _check_decodable(path, ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for truncated / malformed pixel data
        raise DataError(f"{path}: cannot decode the pixel data ({exception_summary(exc)})") from None
    return np.asarray(pixels), ds


def _combine(slices: list[np.ndarray], rescale: list[tuple[float, float]]) -> np.ndarray:
    """(S, R, C) stack with the modality rescale applied (dtype rule: module docstring)."""
    stored = np.stack(slices)
    if all(s == 1.0 and b == 0.0 for s, b in rescale):
        return stored
    out = np.empty(stored.shape, dtype=np.float64)
    for k, (slope, intercept) in enumerate(rescale):
        np.multiply(stored[k], slope, out=out[k])
        out[k] += intercept
    lo, hi = float(out.min()), float(out.max())
    if np.array_equal(out, np.rint(out)):
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return out.astype(dtype)
    return out.astype(np.float32)


def read_dicom_series(folder: str | Path, series_uid: str | None = None, *,
                      choose_hint: str = "choose one with --series UID",
                      skip: Iterable[str | Path] = ()) -> tuple[np.ndarray, np.ndarray, DicomSeries]:
    """Read one DICOM series from ``folder`` (its files, recursively).

    Returns ``(raw, affine, series)``: ``raw`` in NIfTI index order (i, j, k) = (column, row, slice)
    with the rescale applied (like ``read_nifti``'s array; ``to_slice_first(raw)`` gives (S, R, C)),
    ``affine`` the 4x4 RAS affine (like nibabel's ``img.affine``), ``series`` a :class:`DicomSeries`.
    With several series in the folder ``series_uid`` picks one; without it that is a one-line
    DataError listing them (``choose_hint`` says how to choose). ``skip``: files to leave out (a SEG
    file beside the slices is skipped anyway)."""
    folder = Path(folder)
    series = dicom_series_headers(folder, series_uid, choose_hint=choose_hint, skip=skip)
    rows, cols = series.shape[1:]
    slices, rescale = [], []
    for path in series.files:
        pixels, ds = _read_pixels(path)
        if pixels.shape != (rows, cols):
            raise DataError(f"{path}: pixel data is {tuple(pixels.shape)}, the header says {rows} x {cols}")
        slices.append(pixels)
        rescale.append(_rescale(ds, path))
    raw = _combine(slices, rescale)
    return raw.transpose(2, 1, 0), series.affine.copy(), series


def dicom_series_headers(folder: str | Path, series_uid: str | None = None, *,
                         choose_hint: str = "choose one with --series UID",
                         skip: Iterable[str | Path] = ()) -> DicomSeries:
    """The series' geometry and headers in slice order, without reading any pixel data (the checks
    of :func:`read_dicom_series` except decoding)."""
    folder = Path(folder)
    found = _scan(folder, skip=[Path(p) for p in skip])
    uid, members = _choose(folder, found, series_uid, choose_hint)
    members, lps, spacing, thickness, (rows, cols) = _geometry(folder, members)
    count = len(members) * rows * cols
    if count > max_voxels():
        raise DataError(f"{folder}: series {uid} has {len(members)} x {rows} x {cols} = {count:,} voxels, "
                        f"more than the limit {max_voxels():,} (set ${MAX_VOXELS_ENV} to raise it)")
    for path, ds in members:
        _rescale(ds, path)
        _check_decodable(path, ds)
    first = members[0][1]
    return DicomSeries(
        folder=folder,
        series_uid=uid,
        study_uid=str(getattr(first, "StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "") or ""),
        modality=str(getattr(first, "Modality", "") or ""),
        description=" ".join(str(getattr(first, "SeriesDescription", "") or "").split()),
        files=tuple(p for p, _ in members),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for _, ds in members),
        datasets=tuple(ds for _, ds in members),
        affine=LPS_TO_RAS @ lps,
        lps_affine=lps,
        spacing=spacing,
        shape_ijk=(cols, rows, len(members)),
        slice_thickness=thickness,
    )


__all__ = ["DicomSeries", "LPS_TO_RAS", "SeriesSummary", "dicom_series_headers", "list_series", "read_dicom_series"]
