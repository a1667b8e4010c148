"""The files `train predict` writes: label maps as NIfTI in the scan's geometry, the class table,
and (for a DICOM series) a DICOM SEG; written so that an error leaves nothing looking complete.

- :func:`write_label_nifti`: the ``--image`` mode's one NIfTI file, with the input's header.
- :func:`write_prediction`: the ``--input`` mode's ``<name>.nii.gz`` + ``<name>.labels.json``
  (+ ``<name>.seg.dcm``) into a folder checked by :func:`check_outdir`.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from shared.errors import ConfigError
from shared.fileio import atomic_writer

OUTPUT_SUFFIXES = (".nii.gz", ".labels.json", ".seg.dcm")


def save_nifti(path: Path, img) -> None:
    """``img`` to ``path`` atomically (shared.fileio); ``*.gz`` as the gzip stream ``nib.save``
    writes (level 1, no name, mtime 0): the same bytes."""
    with atomic_writer(path) as fh:
        if str(path).endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=1, mtime=0) as gz:
                img.to_file_map({"image": nib.FileHolder(fileobj=gz), "header": nib.FileHolder(fileobj=gz)})
        else:
            img.to_file_map({"image": nib.FileHolder(fileobj=fh), "header": nib.FileHolder(fileobj=fh)})


def write_label_nifti(out: Path, pred: np.ndarray, img, num_labels: int) -> None:
    """uint8 label map (S, R, C) as a NIfTI in the scan's (i, j, k) order with the affine and
    header of ``img`` (the input's nibabel image); ``num_labels`` counts the background."""
    mask = _with_header(np.ascontiguousarray(pred.transpose(2, 1, 0)), img, img.affine)
    mask.header["cal_min"], mask.header["cal_max"] = 0, num_labels - 1
    save_nifti(out, mask)


def _with_header(data: np.ndarray, img, affine: np.ndarray):
    """uint8 ``data`` as a NIfTI image with ``img``'s header (data type uint8, scaling removed)."""
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    return nib.Nifti1Image(data, affine, header)


def check_outdir(out: str | Path, name: str, *, overwrite: bool) -> Path:
    """--out DIR: a folder that is absent or empty, or (with --overwrite) any folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory (give the folder to write {name}.nii.gz into)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: not empty (use --overwrite to write {name}.* into it anyway)")
    return out


def label_nifti(pred: np.ndarray, scan: Any, num_labels: int):
    """uint8 labels (S, R, C) -> a NIfTI image in the scan's (i, j, k) order and RAS affine (for a
    NIfTI input: its header, data type uint8, scaling removed); ``num_labels``: the classes 1..N.
    ``scan``: a train.predict.ScanInput (its image, affine and series are read; not imported, since
    train.predict imports this module)."""
    data = np.ascontiguousarray(pred.transpose(2, 1, 0))
    if scan.image is not None:
        img = _with_header(data, scan.image, scan.affine)
    else:
        img = nib.Nifti1Image(data, scan.affine)
        img.set_qform(scan.affine, code=1)
        img.set_sform(scan.affine, code=1)
        img.header.set_xyzt_units("mm")
        img.set_data_dtype(np.uint8)
    img.header["cal_min"], img.header["cal_max"] = 0, num_labels
    return img


def write_prediction(out: Path, name: str, pred: np.ndarray, scan: Any, class_names: Sequence[str],
                     *, dicom_seg: bool, overwrite: bool) -> dict:
    """<name>.nii.gz, <name>.labels.json (and <name>.seg.dcm) into `out`: written into a hidden
    temporary folder inside `out`, then renamed into place (the NIfTI last); on any error nothing
    of this prediction is left (files renamed already are removed again)."""
    import shutil
    import tempfile

    from shared.fileio import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.predict-", dir=out))
    placed: list[Path] = []
    try:
        files = {".labels.json": tmp / f"{name}.labels.json"}
        atomic_write_json(files[".labels.json"], {str(i): n for i, n in enumerate(class_names, start=1)})
        if dicom_seg:
            from shared.dicom_seg import write_dicom_seg

            files[".seg.dcm"] = tmp / f"{name}.seg.dcm"
            write_dicom_seg(files[".seg.dcm"], pred, list(class_names), scan.series,
                            series_description=f"exemplar-sam {name}")
        files[".nii.gz"] = tmp / f"{name}.nii.gz"
        save_nifti(files[".nii.gz"], label_nifti(pred, scan, len(class_names)))
        final = {}
        for suffix, src in files.items():  # labels.json, seg, then the NIfTI
            dest = out / src.name
            if dest.exists() and not overwrite:
                raise ConfigError(f"--out {out}: {dest.name} exists (use --overwrite to replace it)")
            if dest.is_dir():
                raise ConfigError(f"--out {out}: {dest.name} is a directory")
            src.replace(dest)
            placed.append(dest)
            final[suffix] = dest
        return final
    except BaseException:
        for p in placed:
            p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
