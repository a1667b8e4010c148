"""shared/dicom_seg.py: label volumes as DICOM SEG (highdicom) referencing their series, and back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


from dicomkit import synapse_arrays, write_series, write_synapse_series
from shared.classmaps import SYNAPSE_13_TO_8, SYNAPSE_ORGANS
from shared.dicom_seg import read_dicom_seg, segment_labels, write_dicom_seg
from shared.errors import ConfigError, DataError
from shared.sources.dicom import read_dicom_series
from shared.sources.io import to_slice_first

hd = pytest.importorskip("highdicom")


def _small_series(folder: Path):
    raw = np.zeros((10, 8, 4), np.int16)
    write_series(folder, raw, np.diag([1.0, 1.0, 3.0, 1.0]))
    return read_dicom_series(folder)[2]


def test_synapse_seg_round_trip_references_the_series(synapse_root, tmp_path):
    uid, files, _ = write_synapse_series(tmp_path / "ct", synapse_root, extra_series=False)
    series = read_dicom_series(tmp_path / "ct")[2]
    _, label, _ = synapse_arrays(synapse_root)
    lut = np.array([SYNAPSE_13_TO_8[i] for i in range(14)], np.uint8)
    labels = to_slice_first(lut[label])
    out = write_dicom_seg(tmp_path / "out" / "case.seg.dcm", labels, ("background",) + SYNAPSE_ORGANS, series)
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["case.seg.dcm"]
    seg = hd.seg.segread(str(out))
    refs = seg.get_source_image_uids()
    assert {s for _, s, _ in refs} == {uid} and {i for _, _, i in refs} <= set(series.sop_instance_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == list(SYNAPSE_ORGANS)
    assert seg.SegmentationType == "BINARY"
    back, names = read_dicom_seg(out, series)
    assert np.array_equal(back, labels) and names == dict(enumerate(SYNAPSE_ORGANS, start=1))
    assert segment_labels(out) == names
    # the SEG beside the slices is not taken for another series
    out2 = write_dicom_seg(tmp_path / "ct" / "label.seg.dcm", labels, SYNAPSE_ORGANS, series)
    assert read_dicom_series(tmp_path / "ct")[2].files == tuple(files) and out2.is_file()


def test_empty_and_sparse_labels(tmp_path):
    series = _small_series(tmp_path / "s")
    empty = np.zeros(series.shape, np.uint8)
    write_dicom_seg(tmp_path / "e.seg.dcm", empty, ["liver", "lesion"], series)
    back, names = read_dicom_seg(tmp_path / "e.seg.dcm", series)
    assert not back.any() and names == {1: "liver", 2: "lesion"}
    sparse = empty.copy()
    sparse[2, 3:5, 4:7] = 2  # class 1 absent: still its own segment
    write_dicom_seg(tmp_path / "p.seg.dcm", sparse, ["liver", "lesion"], series)
    assert np.array_equal(read_dicom_seg(tmp_path / "p.seg.dcm", series)[0], sparse)


def test_bad_inputs_are_one_line_errors(tmp_path):
    series = _small_series(tmp_path / "s")
    good = np.zeros(series.shape, np.uint8)
    with pytest.raises(DataError, match="does not fit the series"):
        write_dicom_seg(tmp_path / "a.seg.dcm", good[:2], ["x"], series)
    with pytest.raises(DataError, match=r"label values must be whole numbers 0..1"):
        write_dicom_seg(tmp_path / "a.seg.dcm", good + 2, ["x"], series)
    with pytest.raises(ConfigError, match="duplicate class names"):
        write_dicom_seg(tmp_path / "a.seg.dcm", good, ["x", "x"], series)
    assert not list(tmp_path.glob("*.seg.dcm")) and not list(tmp_path.glob(".*"))
    # a SEG of another series
    other = _small_series(tmp_path / "o")
    write_dicom_seg(tmp_path / "o.seg.dcm", good, ["x"], other)
    with pytest.raises(DataError, match="the SEG references series") as exc:
        read_dicom_seg(tmp_path / "o.seg.dcm", series)
    assert "\n" not in str(exc.value) and other.series_uid in str(exc.value)
    (tmp_path / "junk.seg.dcm").write_bytes(b"not dicom")
    with pytest.raises(DataError, match="junk.seg.dcm: unreadable DICOM SEG"):
        read_dicom_seg(tmp_path / "junk.seg.dcm", series)
    with pytest.raises(DataError, match="not a DICOM Segmentation"):
        segment_labels(series.files[0])


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    series = _small_series(tmp_path / "s")
    labels = np.zeros(series.shape, np.uint8)
    labels[1, 2, 2] = 1

    def boom(self, fh, **kwargs):
        fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", boom)
    with pytest.raises(OSError):
        write_dicom_seg(tmp_path / "out" / "case.seg.dcm", labels, ["x"], series)
    assert list((tmp_path / "out").iterdir()) == []
