"""`train predict`: round trip on a NIfTI written here, index-space conventions, bad input."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from evalkit import make_tiny_run, run_train
from shared.sources import open_source, preprocess_raw


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny run on demo-brain, and a raw int16 scan (NIfTI order, oblique-ish affine)."""
    root = tmp_path_factory.mktemp("predict")
    src = open_source("demo-brain")
    run = make_tiny_run(root / "run", src)
    vol = src.load(src.case_ids()[0])
    tumour = np.flatnonzero(vol.label.reshape(vol.num_slices, -1).any(1))
    k0 = max(0, int(tumour[len(tumour) // 2]) - 10)
    window = (slice(None), slice(14, 114), slice(k0, k0 + 20))  # non-square slices, 20 slices
    raw = (vol.image * 900 - 100).astype(np.int16).transpose(2, 1, 0)[window]  # (i, j, k)
    affine = np.array([[-1.5, 0, 0, 90.0], [0, 1.2, 0, -60.0], [0, 0, 3.0, 12.0], [0, 0, 0, 1]])
    scan = root / "scan.nii.gz"
    nib.save(nib.Nifti1Image(raw, affine), str(scan))
    label = vol.label.transpose(2, 1, 0)[window]
    ks = [k for k in range(label.shape[2]) if label[:, :, k].any()]
    return {"root": root, "run": run, "scan": scan, "raw": raw, "affine": affine, "label": label, "ks": ks,
            "intensity": src.intensity}


def _manual(setup, k, ij_points):
    """What eval's pipeline predicts on slice k from these (i, j) points."""
    from train.inference import Inference, load_run_model
    from train.resize import scale_points

    loaded = load_run_model(setup["run"])
    vol = preprocess_raw(setup["raw"], setup["intensity"])
    h, w = vol.shape[1:]
    inf = Inference(loaded.model, torch.device("cpu"))
    with torch.inference_mode():
        emb = inf.encode(vol[[k]])
        pts = scale_points(np.asarray(ij_points, np.float64), (h, w), inf.img_size)[None].astype(np.float32)
        logits = inf.decode_prompts(emb, np.zeros(1, np.int64), pts, np.ones((1, len(ij_points)), np.int64), (h, w))
    return (logits[0] > 0).astype(np.uint8)


def test_predict_round_trip(setup, capsys):
    k1, k2 = setup["ks"][len(setup["ks"]) // 2], setup["ks"][-1]
    shape = setup["raw"].shape
    lab = setup["label"]
    ii, jj = np.nonzero(lab[:, :, k1])
    p1 = [int(ii[0]), int(jj[0]), k1]
    ii, jj = np.nonzero(lab[:, :, k2])
    p2, p3 = [int(ii[0]), int(jj[0]), k2], [int(ii[-1]), int(jj[-1]), k2]
    points = setup["root"] / "points.json"
    points.write_text(json.dumps({"tumour": [p1, p2, p3]}))
    out = setup["root"] / "mask.nii.gz"
    code, stdout, err = run_train(["predict", "--run", setup["run"], "--image", setup["scan"],
                                   "--points", points, "--out", out], capsys)
    assert code == 0, err
    assert "2 slice(s)" in stdout
    mask = nib.load(out)
    assert mask.shape == setup["raw"].shape and np.allclose(mask.affine, setup["affine"])
    assert mask.get_data_dtype() == np.uint8
    m = np.asarray(mask.dataobj)
    assert set(np.unique(m)) <= {0, 1}
    assert set(np.flatnonzero(m.reshape(-1, m.shape[2]).any(0))) <= {k1, k2}
    # slice k of the NIfTI is array[:, :, k] with (i, j) = (col, row): compare with eval's pipeline
    assert np.array_equal(m[:, :, k1].T, _manual(setup, k1, [p1[:2]]))
    assert np.array_equal(m[:, :, k2].T, _manual(setup, k2, [p2[:2], p3[:2]]))
    # the comparison is not vacuous: the model's answer depends on where the point is
    far = [(p1[0] + 40) % shape[0], (p1[1] + 30) % shape[1]]
    assert not np.array_equal(_manual(setup, k1, [p1[:2]]), _manual(setup, k1, [far]))
    # refuses to overwrite without --overwrite
    code, _, err = run_train(["predict", "--run", setup["run"], "--image", setup["scan"],
                              "--points", points, "--out", out], capsys)
    assert code == 2 and "--overwrite" in err


def test_promptless_run_needs_no_points(setup, tmp_path, capsys):
    run = make_tiny_run(tmp_path / "none", open_source("demo-brain"), prompt="none")
    out = tmp_path / "m.nii.gz"
    code, stdout, err = run_train(["predict", "--run", run, "--image", setup["scan"], "--out", out], capsys)
    assert code == 0, err
    assert f"{setup['raw'].shape[2]} slice(s)" in stdout
    assert nib.load(out).shape == setup["raw"].shape


def test_predict_bad_input(setup, tmp_path, capsys):
    def fails(points_obj, *needles, image=None, raw_text=None):
        p = tmp_path / "p.json"
        p.write_text(raw_text if raw_text is not None else json.dumps(points_obj))
        code, _, err = run_train(["predict", "--run", setup["run"], "--image", image or setup["scan"],
                                  "--points", p, "--out", tmp_path / "o.nii.gz"], capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        for n in needles:
            assert n in err, err
        assert not (tmp_path / "o.nii.gz").exists()

    shape = setup["raw"].shape
    fails({"tumour": [[shape[0], 0, 0]]}, "outside the scan")
    fails({"tumour": [[0, 0, -1]]}, "outside the scan")
    fails({"liver": [[1, 1, 1]]}, "unknown class 'liver'", "tumour")
    fails({"tumour": [[1, 1]]}, "[i, j, k]")
    fails({"tumour": [[1.5, 1, 1]]}, "whole voxel")
    fails(None, "not valid JSON", raw_text="{tumour: ")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(setup["scan"].read_bytes()[:300])
    fails({"tumour": [[1, 1, 1]]}, "broken.nii.gz", image=broken)
    code, _, err = run_train(["predict", "--run", setup["run"], "--image", setup["scan"],
                              "--out", tmp_path / "o.nii.gz"], capsys)
    assert code == 2 and "--points" in err
    code, _, err = run_train(["predict", "--run", tmp_path, "--image", setup["scan"], "--points", "x.json",
                              "--out", tmp_path / "o.nii.gz"], capsys)
    assert code == 2 and "not a `train fit` run" in err


@pytest.mark.shared_data
def test_predict_equals_eval_on_synapse_with_center_points(tmp_path, capsys, synapse_root):
    """Clicking each organ's centre point gives exactly `train eval`'s prediction on those slices:
    same preprocessing (CT window from the run), index conventions and class combination."""
    from train.prompts import center_point

    src = open_source("synapse", synapse_root)
    run = make_tiny_run(tmp_path / "run", src)
    ev = tmp_path / "ev"
    code, _, err = run_train(["eval", "--run", run, "--dataset", "synapse", "--root", synapse_root, "--split", "all",
                              "--save-predictions", "--out", ev, "--num-threads", "1"], capsys)
    assert code == 0, err
    case = src.case_ids()[0]
    vol = src.load(case)  # (S, R, C) = (k, j, i)
    ks = [k for k in range(vol.num_slices) if len(np.unique(vol.label[k])) >= 4][::4][:3]
    assert ks
    points: dict[str, list] = {}
    for k in ks:
        for c in np.unique(vol.label[k])[1:]:
            x, y = center_point(vol.label[k] == c)
            points.setdefault(src.class_names[c], []).append([int(x), int(y), int(k)])
    (tmp_path / "p.json").write_text(json.dumps(points))
    image_file = src.files(case)[0]
    code, _, err = run_train(["predict", "--run", run, "--image", image_file, "--points", tmp_path / "p.json",
                              "--out", tmp_path / "m.nii.gz"], capsys)
    assert code == 0, err
    mine = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)
    theirs = np.asarray(nib.load(ev / "predictions" / f"{case}.nii.gz").dataobj)
    assert mine.shape == theirs.shape == nib.load(image_file).shape
    for k in ks:
        assert np.array_equal(mine[:, :, k], theirs[:, :, k]), k
    assert len(np.unique(mine)) > 2  # several organs predicted
