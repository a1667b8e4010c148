"""Source readers on the real sample data and the demo phantoms, plus every bad input."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.arrays import slice_class_counts
from shared.errors import ConfigError, DataError
from shared.intensity import apply_intensity, validate_preset
from shared.sources import open_described, open_source, preprocess_raw, read_nifti
from synth import sources as synth_sources

SYNAPSE_ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


@pytest.fixture(scope="module")
def brats_volumes(brats_root):
    src = open_source("brats", brats_root)
    start = time.perf_counter()
    volumes = [src.load(c) for c in src.case_ids()]
    return src, volumes, time.perf_counter() - start


# ---------------------------------------------------------------- BraTS
def test_brats_sample_reads_whole_tumour_volumes(brats_volumes, brats_root):
    src, volumes, seconds = brats_volumes
    assert src.name == "brats" and src.task == "single"
    assert src.class_names == ("background", "tumour")
    assert src.intensity == {"kind": "minmax", "per": "slice"}
    assert src.case_ids() == ["Brats18_2013_3_1", "Brats18_2013_4_1", "Brats18_2013_5_1", "Brats18_2013_6_1"]
    for vol in volumes:
        assert vol.image.shape == (155, 240, 240) and vol.image.dtype == np.float32
        assert vol.label.shape == (155, 240, 240) and vol.label.dtype == np.uint8
        assert vol.image.min() >= 0.0 and vol.image.max() <= 1.0
        assert set(np.unique(vol.label)) == {0, 1}
        assert vol.spacing == (1.0, 1.0, 1.0) and vol.affine.shape == (4, 4)
        assert vol.meta == {"modality": "flair", "grade": "HGG"}
        assert [Path(f).name for f in vol.source_files] == [f"{vol.volume_id}_flair.nii.gz", f"{vol.volume_id}_seg.nii.gz"]
    # 309 slices hold >= 10 tumour pixels (README of the sample)
    assert sum(int(((v.label > 0).sum(axis=(1, 2)) >= 10).sum()) for v in volumes) == 309
    print(f"\nBraTS sample (4 volumes) loaded in {seconds:.2f} s")


def test_brats_orientation_and_per_slice_minmax(brats_volumes, brats_root):
    src, volumes, _ = brats_volumes
    vol = volumes[0]
    raw_img = np.asarray(nib.load(src.files(vol.volume_id)[0]).dataobj)
    raw_seg = np.asarray(nib.load(src.files(vol.volume_id)[1]).dataobj)
    k = 77  # a slice index counts along the NIfTI's third axis
    assert np.array_equal(vol.label[k], (raw_seg[:, :, k] > 0).T.astype(np.uint8))
    s = raw_img[:, :, k].T.astype(np.float32)
    assert np.allclose(vol.image[k], (s - s.min()) / (s.max() - s.min()), atol=1e-6)
    # every non-constant slice spans [0, 1]; constant (empty) slices are all 0, no NaN
    for k in range(vol.num_slices):
        if raw_img[:, :, k].min() == raw_img[:, :, k].max():
            assert not vol.image[k].any()
        else:
            assert vol.image[k].min() == 0.0 and vol.image[k].max() == pytest.approx(1.0)
    assert src.num_slices(vol.volume_id) == 155


def test_brats_missing_modality_is_named(brats_root):
    with pytest.raises(DataError, match=r"Brats18_2013_3_1_t1ce\.nii\.gz"):
        open_source("brats", brats_root, modality="t1ce")
    with pytest.raises(ConfigError, match="modality"):
        open_source("brats", brats_root, modality="dwi")


# ---------------------------------------------------------------- Synapse / TransUNet
def test_synapse_sample_hu_window_and_organ_map(synapse_root):
    src = open_source("synapse", synapse_root)
    assert src.task == "multi" and list(src.class_names) == ["background"] + SYNAPSE_ORGANS
    assert src.case_ids() == ["0001"]
    vol = src.load("0001")
    assert vol.image.shape == (30, 101, 122) and vol.spacing == (3.0, 3.0, 3.0)
    raw = np.asarray(nib.load(src.files("0001")[0]).dataobj).astype(np.float32).transpose(2, 1, 0)
    assert np.array_equal(vol.image, (np.clip(raw, -125, 275) + 125) / 400)
    codes = np.asarray(nib.load(src.files("0001")[1]).dataobj).transpose(2, 1, 0)
    # 6 liver -> 5, 11 pancreas -> 8, 5 oesophagus / 9 IVC / 12 adrenal -> background
    assert (vol.label[codes == 6] == 5).all() and (vol.label[codes == 11] == 8).all()
    assert (vol.label[np.isin(codes, [5, 9, 10, 12, 13])] == 0).all()
    assert set(np.unique(vol.label)) == set(range(9))


def test_transunet_sample_groups_slices_by_case(transunet_root):
    src = open_source("transunet", transunet_root)
    assert src.case_ids() == ["case0001"]
    assert len(src.files("case0001")) == 30 and src.num_slices("case0001") == 30
    vol = src.load("case0001")
    assert vol.meta["format"] == "npz" and vol.image.shape == (30, 101, 122)
    assert src.slice_files("case0001", 7)["image_file"].name == "case0001_slice007.npz"
    with np.load(transunet_root / "train_npz" / "case0001_slice007.npz") as z:
        assert np.array_equal(vol.image[7], z["image"]) and np.array_equal(vol.label[7], z["label"])


def test_synapse_and_transunet_give_identical_slices(synapse_root, transunet_root):
    """The same CT through both readers: identical images (bit for bit) and labels."""
    a = open_source("synapse", synapse_root).load("0001")
    tsrc = open_source("transunet", transunet_root)
    for b in (tsrc.load_npz("case0001"), tsrc.load_h5("case0001")):
        assert b.image.shape == a.image.shape
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.label, b.label)
        assert a.class_names == b.class_names


def test_preprocess_raw_matches_the_source(synapse_root):
    src = open_source("synapse", synapse_root)
    raw, _ = read_nifti(src.files("0001")[0])
    assert np.array_equal(preprocess_raw(raw, src.intensity), src.load("0001").image)
    with pytest.raises(DataError, match="new_scan: expected a 3D volume"):
        preprocess_raw(np.zeros((4, 4)), src.intensity, name="new_scan")


def test_describe_reopens_the_same_source(brats_root, synapse_root, transunet_root):
    for src in (open_source("brats", brats_root, modality="flair"), open_source("synapse", synapse_root),
                open_source("transunet", transunet_root), open_source("demo-abdomen")):
        desc = json.loads(json.dumps(src.describe()))
        assert set(desc) >= {"name", "root", "options", "intensity", "class_names", "task"}
        again = open_described(desc)
        assert again.describe() == src.describe() and again.case_ids() == src.case_ids()
    assert Path(open_source("brats", brats_root).describe()["root"]).is_absolute()


def test_synth_sources_is_the_same_api():
    assert synth_sources.open_source is open_source


# ---------------------------------------------------------------- demo
@pytest.mark.parametrize("name,cases,shape,classes", [
    ("demo-brain", 8, (48, 128, 128), {0, 1}),
    ("demo-abdomen", 6, (32, 128, 128), set(range(9))),
])
def test_demo_phantoms_are_deterministic_and_plausible(name, cases, shape, classes):
    src = open_source(name)
    assert len(src.case_ids()) == cases and src.root is None
    vol = src.load(src.case_ids()[1])  # load time is benchmarked, not asserted (noisy shared machines)
    again = open_source(name).load(src.case_ids()[1])
    assert np.array_equal(vol.image, again.image) and np.array_equal(vol.label, again.label)
    other = src.load(src.case_ids()[2])
    assert not np.array_equal(vol.label, other.label)  # cases differ
    assert vol.image.shape == shape and vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    assert 0.0 <= vol.image.min() and vol.image.max() <= 1.0
    assert set(np.unique(vol.label)) == classes
    fg = vol.label.reshape(shape[0], -1).any(axis=1)
    assert fg.any() and not fg[:3].any() and not fg[-3:].any()  # organ/tumour-free slices at the ends
    assert not vol.image[0].any() or name == "demo-abdomen"  # brain: empty slab at the top
    # the target is visibly different from its surroundings (learnable)
    for c in classes - {0}:
        assert abs(vol.image[vol.label == c].mean() - vol.image[vol.label == 0].mean()) > 0.05
    assert vol.affine[0, 0] == vol.spacing[2] and vol.affine[2, 2] == vol.spacing[0]


def test_demo_alias_and_unknown_dataset():
    assert open_source("demo").name == "demo-brain"
    with pytest.raises(ConfigError, match="unknown dataset"):
        open_source("mnist", "/tmp")
    with pytest.raises(ConfigError, match="needs a root"):
        open_source("brats", None)
    with pytest.raises(DataError, match="unknown case"):
        open_source("demo").load("brain_99")


# ---------------------------------------------------------------- nifti (a hospital's own data)
def _write(path: Path, array: np.ndarray, zooms=(0.8, 0.8, 2.5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.diag(list(zooms) + [1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def _nifti_case(rng, shape=(20, 16, 6)):
    image = rng.normal(40, 30, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[4:10, 3:9, 1:4] = 1
    label[12:16, 8:12, 2:5] = 2
    return image, label


def _nifti_root(tmp_path: Path, config: dict | None = None, n: int = 3, suffix: str = ".json") -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "hospital"
    for i in range(n):
        image, label = _nifti_case(rng)
        _write(root / "images" / f"pt{i:02d}.nii.gz", image)
        _write(root / "labels" / f"pt{i:02d}.nii.gz", label)
    cfg = config if config is not None else {"classes": ["background", "liver", "lesion"], "intensity": "ct-abdomen"}
    if suffix == ".json":
        (root / "source.json").write_text(json.dumps(cfg))
    else:
        import yaml

        (root / "source.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_nifti_source_with_config(tmp_path):
    root = _nifti_root(tmp_path)
    src = open_source("nifti", root)
    assert src.case_ids() == ["pt00", "pt01", "pt02"] and src.task == "multi"
    assert src.class_names == ("background", "liver", "lesion")
    vol = src.load("pt01")
    raw = np.asarray(nib.load(root / "images" / "pt01.nii.gz").dataobj)
    assert vol.image.shape == (6, 16, 20) and vol.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert np.array_equal(vol.image, apply_intensity(raw.transpose(2, 1, 0), {"kind": "clip", "low": -125, "high": 275}))
    assert vol.label[2, 4, 5] == 1 and vol.label[3, 9, 13] == 2
    assert open_described(json.loads(json.dumps(src.describe()))).case_ids() == src.case_ids()


def test_nifti_yaml_config_label_values_and_minmax(tmp_path):
    cfg = {"classes": {"0": "background", "1": "tumour"}, "label_values": {"1": "tumour", "2": 1},
           "intensity": {"kind": "minmax", "per": "volume"}}
    src = open_source("nifti", _nifti_root(tmp_path, cfg, suffix=".yaml"))
    vol = src.load("pt00")
    assert src.task == "single" and set(np.unique(vol.label)) == {0, 1}
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0


@pytest.mark.parametrize("cfg,match", [
    ({"classes": ["liver"], "intensity": "ct-abdomen"}, "background"),
    ({"classes": ["background", "liver"]}, "missing 'intensity'"),
    ({"classes": ["background", "liver"], "intensity": "bone"}, "unknown preset"),
    ({"classes": ["background", "liver"], "intensity": {"kind": "clip", "low": 5, "high": 1}}, "low < high"),
    ({"classes": ["background", "liver"], "intensity": "ct-abdomen", "colour": 1}, "unknown key"),
    ({"classes": ["background", "a"], "label_values": {"1": "b"}, "intensity": "ct-abdomen"}, "unknown class"),
])
def test_nifti_bad_config(tmp_path, cfg, match):
    with pytest.raises(ConfigError, match=match):
        open_source("nifti", _nifti_root(tmp_path, cfg))


def test_nifti_without_config_and_bad_json(tmp_path):
    root = _nifti_root(tmp_path)
    (root / "source.json").unlink()
    with pytest.raises(ConfigError, match="no source config"):
        open_source("nifti", root)
    bad = tmp_path / "bad.json"
    bad.write_text("{classes: ")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        open_source("nifti", root, config=bad)


# ---------------------------------------------------------------- bad input
def _synapse_root(tmp_path: Path, image: np.ndarray, label: np.ndarray | None) -> Path:
    root = tmp_path / "Synapse"
    _write(root / "RawData/Training/img/img0005.nii.gz", image)
    (root / "RawData/Training/label").mkdir(parents=True, exist_ok=True)
    if label is not None:
        _write(root / "RawData/Training/label/label0005.nii.gz", label)
    return root


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="BraTS root folder not found") as exc:
        open_source("brats", tmp_path / "nowhere")
    assert "nowhere" in _one_line(exc)
    with pytest.raises(DataError, match="no HGG/ or LGG/"):
        open_source("brats", tmp_path)
    with pytest.raises(DataError, match="no RawData/Training/img/"):
        open_source("synapse", tmp_path)
    with pytest.raises(DataError, match="no train_npz"):
        open_source("transunet", tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "cfg.json").write_text(json.dumps({"classes": ["background", "x"], "intensity": "ct-abdomen"}))
    with pytest.raises(DataError, match="labels folder not found"):
        open_source("nifti", tmp_path, config=tmp_path / "cfg.json")


def test_image_without_label(tmp_path):
    root = _synapse_root(tmp_path, np.zeros((8, 8, 4), np.int16), None)
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: image has no label") as exc:
        open_source("synapse", root)
    assert "label0005.nii.gz" in _one_line(exc)
    brats = tmp_path / "brats" / "LGG" / "Brats18_X_1"
    _write(brats / "Brats18_X_1_flair.nii.gz", np.zeros((8, 8, 4), np.float32))
    with pytest.raises(DataError, match=r"Brats18_X_1_flair\.nii\.gz: image has no label"):
        open_source("brats", tmp_path / "brats")


def test_shape_mismatch(tmp_path):
    root = _synapse_root(tmp_path, np.zeros((8, 8, 4), np.int16), np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: image shape \(8, 8, 4\) does not match label label0005\.nii\.gz shape \(8, 8, 5\)"):
        open_source("synapse", root).load("0005")


def test_truncated_and_unreadable_nifti(tmp_path):
    root = _synapse_root(tmp_path, np.arange(64 * 64 * 16, dtype=np.int16).reshape(64, 64, 16),
                         np.zeros((64, 64, 16), np.uint8))
    img = root / "RawData/Training/img/img0005.nii.gz"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: unreadable or truncated NIfTI") as exc:
        open_source("synapse", root).load("0005")
    _one_line(exc)
    img.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: unreadable or truncated NIfTI"):
        open_source("synapse", root).load("0005")
    img.write_bytes(gzip.compress(b"\x00" * 10))
    with pytest.raises(DataError, match="unreadable or truncated NIfTI"):
        read_nifti(img)


def test_streaming_reads_equal_load(tmp_path, brats_root):
    """load_labels / image_chunks (the streaming scan's reads, one-piece NIfTI reader, chunked
    preprocessing) give exactly load()'s arrays; broken files are one-line DataErrors there too."""
    from shared.sources.io import read_nifti_array

    for src, case in ((open_source("brats", brats_root), "Brats18_2013_3_1"),
                      (open_source("synapse", _synapse_root(tmp_path, np.arange(40 * 30 * 6, dtype=np.int16)
                                                            .reshape(40, 30, 6) - 300,
                                                            np.eye(40, 30, dtype=np.uint8)[:, :, None].repeat(6, 2))),
                       "0005")):
        vol = src.load(case)
        assert np.array_equal(src.load_labels(case), vol.label)
        shape, counts = src.label_counts(case)  # counted on the raw codes
        assert shape == vol.label.shape and np.array_equal(counts, slice_class_counts(vol.label, len(src.class_names)))
        some = src.label_slices(case, [5, 0, 2])
        assert sorted(some) == [0, 2, 5] and all(np.array_equal(v, vol.label[k]) for k, v in some.items())
        shape, chunks = src.image_chunks(case, chunk=4)
        assert shape == vol.image.shape
        image = np.concatenate([c for _, c in chunks])
        assert image.dtype == np.float32 and np.array_equal(image.view(np.uint32), vol.image.view(np.uint32))
        raw = src.raw_image(case)  # the voxels as stored: the preset applied gives load()'s image
        assert np.array_equal(apply_intensity(raw, src.intensity), vol.image)
        for f in src.files(case):
            a, b = read_nifti(f)[0], read_nifti_array(f)
            assert a.dtype == b.dtype and np.array_equal(a, b) and a.flags.f_contiguous == b.flags.f_contiguous
    img = tmp_path / "Synapse/RawData/Training/img/img0005.nii.gz"
    img.write_bytes(img.read_bytes()[:200])
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: unreadable or truncated NIfTI") as exc:
        open_source("synapse", tmp_path / "Synapse").image_chunks("0005")
    _one_line(exc)


def test_nan_and_inf_voxels(tmp_path):
    image = np.zeros((8, 8, 4), np.float32)
    image[2, 3, 1] = np.nan
    image[4, 4, 2] = np.inf
    root = _synapse_root(tmp_path, image, np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(DataError, match=r"img0005\.nii\.gz: image contains 2 NaN or Inf voxels"):
        open_source("synapse", root).load("0005")


def test_label_values_outside_the_class_map(tmp_path):
    label = np.zeros((8, 8, 4), np.uint8)
    label[1, 1, 1] = 14
    label[2, 2, 2] = 200
    root = _synapse_root(tmp_path, np.zeros((8, 8, 4), np.int16), label)
    for read in ("load", "label_counts"):
        with pytest.raises(DataError, match=r"label0005\.nii\.gz: label values 14, 200 are outside the class map"):
            getattr(open_source("synapse", root), read)("0005")
    neg = _write(tmp_path / "neg.nii.gz", np.full((4, 4, 2), -1, np.int16))
    _write(root / "RawData/Training/label/label0005.nii.gz", np.full((8, 8, 4), -1, np.int16))
    with pytest.raises(DataError, match=r"label values -1 are outside"):
        open_source("synapse", root).load("0005")
    assert neg.exists()
    # nifti: a value the config does not map
    cfg_root = _nifti_root(tmp_path, {"classes": ["background", "liver"], "intensity": "ct-abdomen"})
    with pytest.raises(DataError, match=r"pt00\.nii\.gz: label values 2 are outside the class map \(allowed: 0, 1\)"):
        open_source("nifti", cfg_root).load("pt00")
    # BraTS: 5 is not a BraTS label
    case = tmp_path / "brats" / "HGG" / "Brats18_Y_1"
    _write(case / "Brats18_Y_1_flair.nii.gz", np.ones((8, 8, 4), np.float32))
    _write(case / "Brats18_Y_1_seg.nii.gz", np.full((8, 8, 4), 5, np.uint8))
    for read in ("load", "label_counts"):
        with pytest.raises(DataError, match=r"Brats18_Y_1_seg\.nii\.gz: label values 5"):
            getattr(open_source("brats", tmp_path / "brats"), read)("Brats18_Y_1")


def test_transunet_bad_inputs(tmp_path):
    root = tmp_path / "tu"
    (root / "train_npz").mkdir(parents=True)
    for k in (0, 2):
        np.savez(root / "train_npz" / f"case0007_slice{k:03d}.npz", image=np.zeros((4, 4), np.float32),
                 label=np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="case0007_slice001.npz"):
        open_source("transunet", root)
    np.savez(root / "train_npz" / "case0007_slice001.npz", image=np.full((4, 4), 300.0, np.float32),
             label=np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        open_source("transunet", root).load("case0007")
    np.savez(root / "train_npz" / "case0007_slice001.npz", image=np.zeros((4, 4), np.float32),
             label=np.full((4, 4), 9.0, np.float32))
    with pytest.raises(DataError, match="label values 9 are outside"):
        open_source("transunet", root).load("case0007")
    (root / "train_npz" / "case0007_slice001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"case0007_slice001\.npz: unreadable or truncated npz"):
        open_source("transunet", root).load("case0007")


def test_intensity_presets():
    assert validate_preset("ct-abdomen") == {"kind": "clip", "low": -125.0, "high": 275.0}
    x = np.array([[[0, 0], [0, 0]], [[1, 3], [5, 9]]], np.float32)
    out = apply_intensity(x, {"kind": "minmax", "per": "slice"})
    assert not out[0].any() and out[1].min() == 0 and out[1].max() == 1  # constant slice -> 0
    with pytest.raises(ConfigError, match="'per'"):
        validate_preset({"kind": "minmax", "per": "row"})
