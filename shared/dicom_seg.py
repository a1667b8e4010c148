"""DICOM SEG out and in (highdicom): a label volume <-> one SEG file referencing its DICOM series.

>>> raw, affine, series = read_dicom_series("CT_folder")
>>> write_dicom_seg("out/case.seg.dcm", labels, ["spleen", "liver"], series)   # labels (S, R, C), 1..N
>>> labels, names = read_dicom_seg("out/case.seg.dcm", series)                  # back, aligned with series

The SEG is BINARY with one segment per class (segment number = label value, segment label = class
name, in the order given), derived from the series' instances (frame k references the file of slice k,
so viewers and highdicom find the source series). It is written to a temporary sibling and renamed
(``shared.fileio.atomic_writer``): a ``.seg.dcm`` that exists is complete.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError, DataError, exception_summary
from shared.fileio import atomic_writer

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_LABEL_CHARS = 64  # SegmentLabel is LO

# class names this project uses -> pydicom's SNOMED CT code names (codes.SCT.<name>); the rest get
# the generic category/type "Tissue"
_ORGAN_CODES = {
    "spleen": "Spleen", "liver": "Liver", "stomach": "Stomach", "aorta": "Aorta", "pancreas": "Pancreas",
    "gallbladder": "Gallbladder", "right_kidney": "Kidney", "left_kidney": "Kidney", "kidney": "Kidney",
}
_ABNORMAL = {"tumour", "tumor", "lesion", "neoplasm"}


def _segment_codes(name: str):
    from pydicom.sr.codedict import codes

    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in _ORGAN_CODES:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, _ORGAN_CODES[key])
    if key in _ABNORMAL:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    return codes.SCT.Tissue, codes.SCT.Tissue


def _class_names(class_names: Sequence[str], where: str) -> list[str]:
    names = [str(n) for n in class_names]
    if names and names[0] == "background":
        names = names[1:]  # a project class list (index 0 = background) is accepted as is
    if not names:
        raise ConfigError(f"{where}: a DICOM SEG needs at least one class name")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: duplicate class names {names}")
    for n in names:
        if not n.strip() or len(n) > MAX_LABEL_CHARS or "\\" in n:
            raise ConfigError(f"{where}: class name {n!r} cannot be a DICOM segment label "
                              f"(1-{MAX_LABEL_CHARS} characters, no backslash)")
    return names


def check_segment_names(class_names: Sequence[str], where: str) -> list[str]:
    """The N segment labels a SEG of these classes gets (a leading "background" dropped); a one-line
    ConfigError naming `where` when one cannot be a DICOM segment label or they repeat. Lets a caller
    check before the work whose result it will write."""
    return _class_names(class_names, where)


def write_dicom_seg(path: str | Path, labels: np.ndarray, class_names: Sequence[str], series: Any, *,
                    series_description: str = "exemplar-sam segmentation", series_number: int = 300,
                    algorithm_name: str = "exemplar-sam", algorithm_version: str = "0",
                    software_version: str | None = None) -> Path:
    """Write ``labels`` (uint-valued (S, R, C), 0 = background, 1..N = ``class_names``) as one DICOM
    SEG at ``path``, derived from ``series`` (a :class:`shared.sources.dicom.DicomSeries`, or its
    datasets in slice order). ``class_names``: the N names of labels 1..N (a list starting with
    "background" is taken as the project's class list). Atomic; returns the path."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    datasets = list(getattr(series, "datasets", series))
    names = _class_names(class_names, str(path))
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != len(datasets):
        raise DataError(f"{path}: label volume of shape {tuple(labels.shape)} does not fit the series "
                        f"({len(datasets)} slices)")
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise DataError(f"{path}: label slices are {labels.shape[1]} x {labels.shape[2]}, the series' "
                        f"are {rows} x {cols}")
    if labels.dtype.kind not in "uib" or (labels.size and (int(labels.min()) < 0 or int(labels.max()) > len(names))):
        hi = int(labels.max()) if labels.size else 0
        raise DataError(f"{path}: label values must be whole numbers 0..{len(names)} "
                        f"(one per class), got {labels.dtype} up to {hi}")
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.cid7162.ArtificialIntelligence,
                                                   version=str(algorithm_version))
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, kind = _segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    pixel_array = labels.astype(np.uint8 if len(names) < 256 else np.uint16)
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="exemplar-sam",
            manufacturer_model_name=algorithm_name,
            software_versions=software_version or str(algorithm_version),
            device_serial_number="0",
            series_description=series_description,
            omit_empty_frames=bool(pixel_array.any()),  # an empty result still gets its frames
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"{path}: cannot make a DICOM SEG from the series {datasets[0].get('SeriesInstanceUID', '?')} "
                        f"({exception_summary(exc)})") from None
    with atomic_writer(path, "wb") as fh:
        seg.save_as(fh, enforce_file_format=True)
    return path


def segment_labels(path: str | Path) -> dict[int, str]:
    """{segment number: segment label} of a SEG file, from its header alone (no pixel data)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: DICOM SEG file not found")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{path}: unreadable DICOM SEG ({exception_summary(exc)})") from None
    if str(getattr(ds, "SOPClassUID", "")) != SEG_STORAGE or "SegmentSequence" not in ds:
        raise DataError(f"{path}: not a DICOM Segmentation (SOP class {getattr(ds, 'SOPClassUID', 'missing')})")
    out: dict[int, str] = {}
    for item in ds.SegmentSequence:
        number = int(item.SegmentNumber)
        out[number] = str(getattr(item, "SegmentLabel", "") or f"segment {number}")
    return dict(sorted(out.items()))


def read_dicom_seg(path: str | Path, series: Any) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG of ``series`` (a :class:`shared.sources.dicom.DicomSeries`) -> (uint8 (S, R, C) segment
    numbers aligned with the series' slices, {segment number: label}). The SEG must reference the
    series' instances (as highdicom, dcmqi, 3D Slicer and OHIF write them); overlapping segments,
    more than 255 segments or another series are one-line DataErrors."""
    import highdicom as hd

    path = Path(path)
    labels_by_number = segment_labels(path)
    if max(labels_by_number, default=0) > 255:
        raise DataError(f"{path}: {len(labels_by_number)} segments; at most 255 fit a uint8 label volume")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # highdicom / pydicom raise many kinds on malformed files
        raise DataError(f"{path}: unreadable DICOM SEG ({exception_summary(exc)})") from None
    referenced = {str(s) for _, s, _ in seg.get_source_image_uids()}
    if series.series_uid not in referenced:
        raise DataError(f"{path}: the SEG references series {', '.join(sorted(referenced)) or '(none)'}, "
                        f"not {series.series_uid} read from {series.folder}")
    try:
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(series.sop_instance_uids), combine_segments=True,
            assert_missing_frames_are_empty=True, dtype=np.uint8)
    except RuntimeError as exc:
        raise DataError(f"{path}: segments overlap; cannot make one label volume ({exception_summary(exc)})") from None
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise DataError(f"{path}: SEG frames do not map onto the series' slices ({exception_summary(exc)})") from None
    return np.ascontiguousarray(labels, dtype=np.uint8), labels_by_number


__all__ = ["check_segment_names", "read_dicom_seg", "segment_labels", "write_dicom_seg"]
