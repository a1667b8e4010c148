"""train/prediction_files.py: the NIfTI bytes, the output folder check, nothing left on an error."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from shared.errors import ConfigError
from train.prediction_files import check_outdir, save_nifti, write_label_nifti, write_prediction


def _scan(tmp_path: Path):
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    return img, SimpleNamespace(image=img, affine=affine, series=None)


def test_save_nifti_writes_the_bytes_nib_save_writes(tmp_path: Path) -> None:
    img, _ = _scan(tmp_path)
    for name in ("a.nii.gz", "a.nii"):
        save_nifti(tmp_path / f"ours-{name}", img)
        nib.save(img, tmp_path / f"nib-{name}")
        assert (tmp_path / f"ours-{name}").read_bytes() == (tmp_path / f"nib-{name}").read_bytes()


def test_label_nifti_is_in_the_scans_order_and_geometry(tmp_path: Path) -> None:
    img, _ = _scan(tmp_path)
    pred = np.zeros((4, 5, 6), np.uint8)  # (S, R, C) = (k, j, i)
    pred[2, 3, 1] = 2
    write_label_nifti(tmp_path / "m.nii.gz", pred, img, 3)
    back = nib.load(tmp_path / "m.nii.gz")
    data = np.asarray(back.dataobj)
    assert data.dtype == np.uint8 and data.shape == (6, 5, 4) and data[1, 3, 2] == 2 and data.sum() == 2
    assert np.allclose(back.affine, img.affine) and back.header["cal_max"] == 2


def test_check_outdir_refuses_a_file_and_a_folder_with_data(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        check_outdir(tmp_path / "f", "scan", overwrite=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("user data")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_outdir(tmp_path / "d", "scan", overwrite=False)
    assert check_outdir(tmp_path / "d", "scan", overwrite=True) == tmp_path / "d"
    assert check_outdir(tmp_path / "new", "scan", overwrite=False) == tmp_path / "new"


def test_write_prediction_leaves_nothing_when_a_file_is_in_the_way(tmp_path: Path) -> None:
    _, scan = _scan(tmp_path)
    pred = np.zeros((4, 5, 6), np.uint8)
    out = tmp_path / "o"
    files = write_prediction(out, "scan", pred, scan, ["liver"], dicom_seg=False, overwrite=False)
    assert sorted(files) == [".labels.json", ".nii.gz"] and sorted(p.name for p in out.iterdir()) == \
        ["scan.labels.json", "scan.nii.gz"]
    (out / "scan.labels.json").unlink()  # the NIfTI stays in the way: labels.json is placed, then removed
    with pytest.raises(ConfigError, match="scan.nii.gz exists"):
        write_prediction(out, "scan", pred, scan, ["liver"], dicom_seg=False, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["scan.nii.gz"]  # no labels.json, no hidden folder
