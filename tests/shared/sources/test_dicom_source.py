"""shared/sources/dicom_source.py: `--dataset dicom`, a DICOM series per case with a SEG or NIfTI label."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clikit import run_in_process
from dicomkit import SYNAPSE_LABEL, synapse_arrays, write_series, write_synapse_series
from shared.classmaps import SYNAPSE_13_TO_8, SYNAPSE_CLASS_NAMES, SYNAPSE_ORGANS
from shared.dicom_seg import write_dicom_seg
from shared.errors import ConfigError, DataError
from shared.intensity import PRESETS
from shared.sources import open_described, open_source
from shared.sources.dicom import read_dicom_series
from shared.sources.io import to_slice_first

pytest.importorskip("highdicom")


def _synapse_labels(synapse_root: Path) -> np.ndarray:
    _, label, _ = synapse_arrays(synapse_root)
    lut = np.array([SYNAPSE_13_TO_8[i] for i in range(14)], np.uint8)
    return to_slice_first(lut[label])


@pytest.fixture(scope="module")
def seg_root(synapse_root, tmp_path_factory):
    """ROOT/ct1/image/*.dcm + ROOT/ct1/label.seg.dcm: the Synapse CT and its 8 organs."""
    root = tmp_path_factory.mktemp("dicom_src")
    write_synapse_series(root / "ct1" / "image", synapse_root, extra_series=False)
    series = read_dicom_series(root / "ct1" / "image")[2]
    write_dicom_seg(root / "ct1" / "label.seg.dcm", _synapse_labels(synapse_root), SYNAPSE_ORGANS, series)
    return root


def test_seg_labelled_case_reads_like_the_synapse_source(seg_root, synapse_root):
    src = open_source("dicom", seg_root)
    ref = open_source("synapse", synapse_root)
    assert src.case_ids() == ["ct1"] and src.class_names == SYNAPSE_CLASS_NAMES and src.task == "multi"
    assert src.intensity == PRESETS["ct-abdomen"]  # CT default
    vol, want = src.load("ct1"), ref.load("0001")
    assert np.array_equal(vol.image, want.image) and np.array_equal(vol.label, want.label)
    np.testing.assert_allclose(vol.affine, want.affine, atol=1e-5)
    assert vol.spacing == pytest.approx(want.spacing) and vol.meta["modality"] == "CT"
    assert np.array_equal(src.raw_image("ct1"), ref.raw_image("0001"))
    shape, counts = src.label_counts("ct1")
    assert shape == want.label.shape and np.array_equal(counts, ref.label_counts("0001")[1])
    chunks = dict(src.image_chunks("ct1", chunk=8)[1])
    assert np.array_equal(np.concatenate([chunks[k] for k in sorted(chunks)]), want.image)
    assert np.array_equal(src.label_slices("ct1", [3, 12])[12], want.label[12])
    assert src.num_slices("ct1") == 30 and src.files("ct1")[-1].name == "label.seg.dcm"
    assert src.slice_files("ct1", 4)["image_file"] == src.files("ct1")[4]
    import pickle

    # pickling (to pool workers) leaves the cached scan behind: the pickle is tiny beside the scan
    raw = src.raw_image("ct1")
    assert len(pickle.dumps(src)) < raw.nbytes // 2     # 113 kB of index beside a 739 kB scan
    assert np.array_equal(pickle.loads(pickle.dumps(src)).raw_image("ct1"), raw)
    again = open_described(json.loads(json.dumps(src.describe())))
    assert again.class_names == src.class_names and again.intensity == src.intensity


def test_nifti_label_with_config_and_flipped_grid(seg_root, synapse_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(seg_root / "ct1" / "image", root / "ct1" / "image")
    shutil.copy(synapse_root / SYNAPSE_LABEL, root / "ct1" / "label.nii.gz")
    # a second case whose label NIfTI stores the same voxels with its column axis flipped
    import nibabel as nib

    shutil.copytree(seg_root / "ct1" / "image", root / "ct2" / "image")
    img = nib.load(str(synapse_root / SYNAPSE_LABEL))
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, img.shape[0] - 1
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), img.affine @ flip), str(root / "ct2" / "label.nii.gz"))
    with pytest.raises(ConfigError, match=r"label.nii.gz: a NIfTI label needs the class names"):
        open_source("dicom", root)
    cfg = {"classes": list(SYNAPSE_CLASS_NAMES), "label_values": {str(k): v for k, v in SYNAPSE_13_TO_8.items()},
           "intensity": {"kind": "clip", "low": -200, "high": 300}}
    (root / "source.json").write_text(json.dumps(cfg))
    src = open_source("dicom", root)
    want = open_source("synapse", synapse_root).load("0001")
    for case in ("ct1", "ct2"):
        assert np.array_equal(src.load_labels(case), want.label)
    assert src.intensity == {"kind": "clip", "low": -200.0, "high": 300.0}
    assert open_source("dicom", root, intensity="ct-abdomen").intensity == PRESETS["ct-abdomen"]
    # a label of another grid
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 30), np.uint8), img.affine), str(root / "ct2" / "label.nii.gz"))
    with pytest.raises(DataError, match="is not the geometry of the series") as exc:
        open_source("dicom", root).load_labels("ct2")
    assert "\n" not in str(exc.value) and "ct2/label.nii.gz" in str(exc.value)


def test_segment_classes_and_unknown_segments(seg_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(seg_root, root)
    (root / "source.json").write_text(json.dumps({"segment_classes": {n: "background" for n in SYNAPSE_ORGANS if n != "liver"}}))
    src = open_source("dicom", root)
    assert src.class_names == ("background", "liver") and src.task == "single"
    assert set(np.unique(src.load_labels("ct1"))) == {0, 1}
    (root / "source.json").write_text(json.dumps({"classes": ["background", "liver", "spleen"]}))
    with pytest.raises(DataError, match=r"label.seg.dcm: segment 2 'right_kidney' is not a class") as exc:
        open_source("dicom", root).load_labels("ct1")
    assert "segment_classes" in str(exc.value)


def test_layout_errors(seg_root, tmp_path):
    with pytest.raises(DataError, match="dicom root folder not found"):
        open_source("dicom", tmp_path / "nowhere")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no case folders with an image/ series"):
        open_source("dicom", tmp_path)
    root = tmp_path / "root"
    shutil.copytree(seg_root, root)
    (root / "ct2" / "image").mkdir(parents=True)
    with pytest.raises(DataError, match=r"ct2/image: image series has no label"):
        open_source("dicom", root)
    shutil.rmtree(root / "ct2")
    (root / "source.json").write_text(json.dumps({"colour": 1}))
    with pytest.raises(ConfigError, match="unknown key"):
        open_source("dicom", root)
    (root / "source.json").unlink()
    # a second series in the case folder: named in the error, chosen in the config
    extra, _ = write_series(root / "ct1" / "image", np.zeros((8, 8, 3), np.int16), np.eye(4), series_number=5,
                            prefix="x")
    with pytest.raises(DataError, match=r'2 DICOM series in the folder, set "series": \{"ct1": UID\}') as exc:
        open_source("dicom", root)
    assert extra in str(exc.value)
    (root / "source.json").write_text(json.dumps({"series": {"ct1": _other_uid(root, extra)}}))
    assert open_source("dicom", root).num_slices("ct1") == 30
    (root / "source.json").write_text(json.dumps({"series": {"ct1": extra}}))
    assert open_source("dicom", root).num_slices("ct1") == 3


def _other_uid(root: Path, extra: str) -> str:
    from shared.sources.dicom import list_series

    return next(s.series_uid for s in list_series(root / "ct1" / "image") if s.series_uid != extra)


def test_synth_build_from_dicom(seg_root, tmp_path):
    from synth.cli import cli

    out = tmp_path / "ds"
    code, text = run_in_process(cli, "build", "--dataset", "dicom", "--root", seg_root, "--split", "all",
                                "--exemplars", "1", "--num-samples", "6", "--shard-size", "3", "--workers", "1",
                                "--no-progress", "--out", out)
    assert code == 0, text
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["name"] == "dicom" and info["source"]["class_names"] == list(SYNAPSE_CLASS_NAMES)
    assert info["num_samples"] == 6 and info["source"]["intensity"] == PRESETS["ct-abdomen"]
    # an exemplar list of a dicom source: its files are the slice's own DICOM file and the SEG
    lst = tmp_path / "list.json"
    code, text = run_in_process(cli, "select", "--dataset", "dicom", "--root", seg_root, "--split", "all",
                                "--exemplars", "1", "--no-progress", "--out", lst)
    assert code == 0, text
    entry = json.loads(lst.read_text())["exemplars"][0]
    assert entry["files"]["label_file"] == "ct1/label.seg.dcm" and entry["files"]["image_file"].startswith("ct1/image/")
    code, text = run_in_process(cli, "build", "--exemplar-list", lst, "--split", "all", "--num-samples", "3",
                                "--shard-size", "3", "--workers", "1", "--no-progress", "--out", tmp_path / "ds2")
    assert code == 0, text
