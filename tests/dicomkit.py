"""Writing DICOM CT series for tests (pydicom), from a NIfTI-order array and its RAS affine.

``write_series(folder, raw_ijk, affine)`` writes one single-frame file per slice k with the LPS
geometry of the affine (``diag(-1, -1, 1, 1) @ affine``): ImageOrientationPatient from its first two
columns, PixelSpacing (rows, columns) = their norms (j, i), ImagePositionPatient of slice k =
``lps @ [0, 0, k, 1]``, pixel data ``raw[:, :, k].T`` (rows = j, columns = i). Stored values are
``(value - intercept) / slope``, so a slope/intercept pair must reproduce the values exactly: the
default slope 0.5 and intercept -1200 store ``2 * (HU + 1200)`` (even unsigned integers for HU in
-1200..31567) and read back bit-identically, while still testing that both are applied.

File names are random (``shuffle_seed``) and InstanceNumber runs backwards, so neither orders the
slices.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

SYNAPSE_IMAGE = "RawData/Training/img/img0001.nii.gz"
SYNAPSE_LABEL = "RawData/Training/label/label0001.nii.gz"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def base_dataset(*, study_uid: str, series_uid: str, frame_uid: str, modality: str = "CT",
                 transfer_syntax: str | None = None):
    """A CT image dataset with the patient / study / series / equipment attributes filled in."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Test^Synapse"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = datetime.date(2026, 1, 2).strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "exemplar-sam tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def write_series(folder: str | Path, raw_ijk: np.ndarray, affine: np.ndarray, *, slope: float = 0.5,
                 intercept: float = -1200.0, shuffle_seed: int | None = 0, series_uid: str | None = None,
                 study_uid: str | None = None, frame_uid: str | None = None, series_number: int = 1,
                 description: str = "abdomen", slice_thickness: float | None = None,
                 prefix: str = "") -> tuple[str, list[Path]]:
    """Write ``raw_ijk`` (NIfTI order) as a CT series; returns (series uid, files in slice order k)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = np.asarray(raw_ijk)
    ni, nj, nk = raw.shape
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # along i (columns), along j (rows)
    row_dir, col_dir = col_step / np.linalg.norm(col_step), row_step / np.linalg.norm(row_step)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    stored = (raw.astype(np.float64) - intercept) / slope
    if not np.array_equal(stored, np.rint(stored)) or stored.min() < 0 or stored.max() > 65535:
        raise ValueError("slope/intercept do not store these values exactly as uint16")
    stored = stored.astype(np.uint16)
    names = [f"{prefix}{k:04d}" for k in range(nk)]
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        names = [f"{prefix}{int(x):08x}.dcm" for x in rng.integers(0, 2**31, nk)]
    files = []
    for k in range(nk):
        ds = base_dataset(study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid)
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = nk - k  # backwards: must not be what orders the slices
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(np.linalg.norm(row_step)), _ds(np.linalg.norm(col_step))]
        ds.SliceThickness = _ds(slice_thickness if slice_thickness is not None else np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = nj, ni
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / names[k]
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        files.append(path)
    return series_uid, files


def synapse_arrays(synapse_root: Path):
    """(image int16 (i, j, k), label uint8 (i, j, k), affine) of the Synapse sample, read by nibabel."""
    import nibabel as nib

    img = nib.load(str(synapse_root / SYNAPSE_IMAGE))
    lab = nib.load(str(synapse_root / SYNAPSE_LABEL))
    return np.asanyarray(img.dataobj), np.asanyarray(lab.dataobj), np.asarray(img.affine, dtype=np.float64)


def write_synapse_series(folder: Path, synapse_root: Path, *, extra_series: bool = True, **kwargs):
    """The Synapse sample CT as a series in ``folder`` (shuffled names, slope 0.5 / intercept -1200,
    LPS geometry), plus, by default, an unrelated 4-slice 16 x 16 series in the same folder.
    Returns (series uid, files in slice order, extra series uid or None)."""
    image, _, affine = synapse_arrays(synapse_root)
    uid, files = write_series(folder, image, affine, **kwargs)
    extra = None
    if extra_series:
        scout = np.full((16, 16, 4), -1000, dtype=np.int16)
        scout[4:12, 4:12] = 40
        extra, _ = write_series(folder, scout, np.diag([2.0, 2.0, 5.0, 1.0]), series_number=2,
                                description="scout", shuffle_seed=7, prefix="x")
    return uid, files, extra
