"""shared/sources/dicom.py: a DICOM series folder read like the NIfTI it was written from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


from dicomkit import SYNAPSE_IMAGE, write_series, write_synapse_series
from shared.errors import DataError
from shared.sources import open_source
from shared.sources.dicom import dicom_series_headers, list_series, read_dicom_series
from shared.sources.io import nifti_geometry, read_nifti, to_slice_first

pydicom = pytest.importorskip("pydicom")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def synapse_series(synapse_root, tmp_path_factory):
    """The Synapse CT as a shuffled DICOM series (slope 0.5, intercept -1200, LPS) + a scout series."""
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    uid, files, extra = write_synapse_series(folder, synapse_root)
    return folder, uid, files, extra


def test_series_reads_back_the_nifti_array_and_affine(synapse_series, synapse_root):
    folder, uid, files, _ = synapse_series
    raw, affine, series = read_dicom_series(folder, uid)
    nii_raw, img = read_nifti(synapse_root / SYNAPSE_IMAGE)
    spacing, nii_affine = nifti_geometry(img)
    assert raw.shape == nii_raw.shape == series.shape_ijk and raw.dtype == np.int16
    assert np.array_equal(raw, nii_raw)  # HU exact: 0.5 * stored - 1200
    np.testing.assert_allclose(affine, nii_affine, atol=1e-5)
    assert series.spacing == pytest.approx(spacing)
    assert series.files == tuple(files)  # slice order from the positions, not names / InstanceNumber
    assert series.series_uid == uid and series.modality == "CT" and series.shape == (30, 101, 122)
    # the slice-first form equals what the synapse source reads from the NIfTI
    assert np.array_equal(to_slice_first(raw), open_source("synapse", synapse_root).raw_image("0001"))
    # headers alone: same geometry, no pixel data
    head = dicom_series_headers(folder, uid)
    assert np.array_equal(head.affine, affine) and "PixelData" not in head.datasets[0]


def test_several_series_need_a_choice(synapse_series):
    folder, uid, _, extra = synapse_series
    with pytest.raises(DataError, match="2 DICOM series in the folder, choose one with --series UID") as exc:
        read_dicom_series(folder)
    line = _one_line(exc)
    assert str(folder) in line and uid in line and extra in line and "30 files" in line and "'scout'" in line
    assert [s.series_uid for s in list_series(folder)] == [uid, extra]
    with pytest.raises(DataError, match="no series 1.2.3 in the folder"):
        read_dicom_series(folder, "1.2.3")
    raw, _, series = read_dicom_series(folder, extra)
    assert raw.shape == (16, 16, 4) and series.spacing == pytest.approx((5.0, 2.0, 2.0))


def test_oblique_geometry_round_trips(tmp_path):
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag([0.8, 0.7, 2.5])
    affine[:3, 3] = [10.5, -20.25, 33.0]
    raw = np.arange(9 * 7 * 5, dtype=np.int16).reshape(9, 7, 5) - 100
    write_series(tmp_path, raw, affine, shuffle_seed=3)
    back, back_affine, series = read_dicom_series(tmp_path)
    assert np.array_equal(back, raw)
    np.testing.assert_allclose(back_affine, affine, atol=1e-6)
    assert series.spacing == pytest.approx((2.5, 0.7, 0.8))


def test_left_handed_grid_comes_back_reversed_in_the_same_place(tmp_path):
    """A NIfTI whose k axis points against the DICOM slice normal (e.g. LAS): DICOM keeps no
    handedness, so slices come back in normal order; every voxel keeps its world position."""
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    raw = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    write_series(tmp_path, raw, affine)
    back, back_affine, _ = read_dicom_series(tmp_path)
    assert np.array_equal(back, raw[:, :, ::-1])
    ijk = np.array([2, 3, 1, 1.0])
    np.testing.assert_allclose(back_affine @ [2, 3, 4 - 1 - 1, 1], affine @ ijk, atol=1e-6)


def test_float_rescale_and_stored_dtype(tmp_path):
    raw = np.arange(4 * 3 * 3, dtype=np.float64).reshape(4, 3, 3) * 0.25 + 0.25
    write_series(tmp_path / "f", raw, np.eye(4), slope=0.25, intercept=0.0)
    back, _, _ = read_dicom_series(tmp_path / "f")
    assert back.dtype == np.float32 and np.array_equal(back, raw.astype(np.float32))
    ints = np.arange(4 * 3 * 3, dtype=np.uint16).reshape(4, 3, 3)
    write_series(tmp_path / "i", ints, np.eye(4), slope=1.0, intercept=0.0)
    back, _, _ = read_dicom_series(tmp_path / "i")
    assert back.dtype == np.uint16 and np.array_equal(back, ints)


# ------------------------------------------------------------------------------------- bad input
@pytest.fixture()
def small(tmp_path):
    raw = (np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5) % 50) - 20
    _, files = write_series(tmp_path / "s", raw, np.diag([1.0, 1.0, 2.0, 1.0]), shuffle_seed=1)
    return tmp_path / "s", files


def _edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(str(path))
    for key, value in attrs.items():
        setattr(ds, key, value)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_missing_slice(small):
    folder, files = small
    files[2].unlink()
    with pytest.raises(DataError, match="1 missing slice between") as exc:
        read_dicom_series(folder)
    line = _one_line(exc)
    assert str(files[3]) in line and files[1].name in line and "gap 4 mm" in line and "spacing is 2 mm" in line


def test_uneven_spacing(small):
    folder, files = small
    _edit(files[4], ImagePositionPatient=["-0", "-0", "8.7"])
    with pytest.raises(DataError, match="uneven slice spacing: 2.7 mm between") as exc:
        read_dicom_series(folder)
    assert str(files[4]) in _one_line(exc)


def test_duplicate_position(small):
    folder, files = small
    _edit(files[3], ImagePositionPatient=["-0", "-0", "4"])
    with pytest.raises(DataError, match="same slice position as") as exc:
        read_dicom_series(folder)
    assert files[2].name in _one_line(exc)


def test_mixed_sizes(small):
    folder, files = small
    ds = pydicom.dcmread(str(files[1]))
    ds.Rows, ds.Columns = 4, 4
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    pydicom.dcmwrite(str(files[1]), ds, enforce_file_format=True)
    with pytest.raises(DataError, match="mixed slice sizes") as exc:
        read_dicom_series(folder)
    assert str(files[1]) in _one_line(exc) and "4 x 4" in str(exc.value) and "6 x 8" in str(exc.value)


def test_mixed_orientation_and_missing_geometry(small):
    folder, files = small
    _edit(files[1], ImageOrientationPatient=["1", "0", "0", "0", "0", "1"])
    with pytest.raises(DataError, match="mixed orientations") as exc:
        read_dicom_series(folder)
    assert str(files[1]) in _one_line(exc)
    ds = pydicom.dcmread(str(files[1]))
    del ds.ImageOrientationPatient
    pydicom.dcmwrite(str(files[1]), ds, enforce_file_format=True)
    with pytest.raises(DataError, match="ImageOrientationPatient must be 6 numbers"):
        read_dicom_series(folder)


def _undecodable_syntax():
    from pydicom.pixels import get_decoder
    from pydicom import uid

    for syntax in (uid.JPEGLosslessSV1, uid.HTJ2KLossless, uid.JPEGLossless, uid.JPEGExtended12Bit,
                   uid.JPEGLSNearLossless, uid.JPEG2000):
        if not get_decoder(syntax).is_available:
            return syntax
    pytest.skip("every compressed transfer syntax has a decoder installed here")


def test_compressed_without_decoder(small):
    from pydicom.encaps import encapsulate

    folder, files = small
    syntax = _undecodable_syntax()
    ds = pydicom.dcmread(str(files[2]))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 30])
    ds["PixelData"].VR = "OB"
    pydicom.dcmwrite(str(files[2]), ds, enforce_file_format=True)
    with pytest.raises(DataError, match="no decoder for it is installed") as exc:
        read_dicom_series(folder)
    assert str(files[2]) in _one_line(exc) and syntax.name in str(exc.value)
    with pytest.raises(DataError, match="no decoder"):  # headers alone refuse it too
        dicom_series_headers(folder)


def test_truncated_pixel_data(small):
    folder, files = small
    ds = pydicom.dcmread(str(files[0]))
    ds.PixelData = ds.PixelData[:20]
    pydicom.dcmwrite(str(files[0]), ds, enforce_file_format=True)
    with pytest.raises(DataError, match="cannot decode the pixel data") as exc:
        read_dicom_series(folder)
    assert str(files[0]) in _one_line(exc)


def test_no_dicom_and_not_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no DICOM image files in the folder"):
        read_dicom_series(tmp_path)
    with pytest.raises(DataError, match="DICOM folder not found"):
        read_dicom_series(tmp_path / "nowhere")
    with pytest.raises(DataError, match="expected a folder of DICOM files"):
        read_dicom_series(tmp_path / "notes.txt")


def test_unreadable_file(small):
    folder, files = small
    blob = files[0].read_bytes()
    files[0].write_bytes(blob[:200])  # preamble and part of the meta header
    with pytest.raises(DataError) as exc:
        read_dicom_series(folder)
    assert str(files[0]) in _one_line(exc)
