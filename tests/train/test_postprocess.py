"""train.postprocess: keep only the predicted regions a click points at."""
import numpy as np
import pytest

from train.postprocess import KEEP_MODES, keep_clicked, keep_clicked_slice, keep_clicked_volume


def two_blobs() -> np.ndarray:
    """Class 1: a 3x3 blob at rows 1-3, cols 1-3 and a 2x2 blob at rows 6-7, cols 6-7 (not
    touching); class 2: one pixel at (0, 9)."""
    lab = np.zeros((10, 10), np.uint8)
    lab[1:4, 1:4] = 1
    lab[6:8, 6:8] = 1
    lab[0, 9] = 2
    return lab


def test_slice_keeps_only_the_clicked_component_of_each_class():
    lab = two_blobs()
    out = keep_clicked_slice(lab, {1: np.array([[2.2, 1.8]]), 2: np.array([[9.0, 0.0]])})
    assert (out[1:4, 1:4] == 1).all()
    assert (out[6:8, 6:8] == 0).all()
    assert out[0, 9] == 2
    assert out.sum() == 9 + 2


def test_slice_two_clicks_keep_two_components_and_unclicked_classes_go():
    lab = two_blobs()
    out = keep_clicked_slice(lab, {1: np.array([[1, 1], [7, 7]])})
    assert (out == 1).sum() == 9 + 4
    assert (out == 2).sum() == 0  # class 2 had no click


def test_slice_diagonal_neighbours_are_one_component():
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0] = lab[1, 1] = lab[2, 2] = 1
    assert (keep_clicked_slice(lab, {1: np.array([[0, 0]])}) == 1).sum() == 3


def test_slice_click_outside_the_prediction_keeps_the_nearest_component():
    lab = two_blobs()
    out = keep_clicked_slice(lab, {1: np.array([[5.0, 5.0]])})  # (row 5, col 5): nearest is (6, 6)
    assert (out == 1).sum() == 4 and (out[6:8, 6:8] == 1).all()
    ring = np.zeros((10, 10), np.uint8)
    ring[1:8, 1:8] = 1
    ring[3:6, 3:6] = 0            # a mask with a hole where the click is (a dark core)
    ring[9, 9] = 1                # and a stray pixel, not touching it
    out = keep_clicked_slice(ring, {1: np.array([[4, 4]])})
    assert (out == 1).sum() == 49 - 9 and out[9, 9] == 0
    assert (keep_clicked_slice(np.zeros((4, 4), np.uint8), {1: np.array([[1, 1]])}) == 0).all()


def test_slice_clicks_are_clipped_to_the_map():
    lab = two_blobs()
    out = keep_clicked_slice(lab, {2: np.array([[12.0, -3.0]])})  # nearest pixel (0, 9)
    assert out[0, 9] == 2


def test_volume_keeps_a_region_that_continues_a_clicked_one():
    vol = np.zeros((3, 10, 10), np.uint8)
    vol[0, 1:4, 1:4] = 1          # clicked on slice 0
    vol[1, 3:5, 3:5] = 1          # touches slice 0's blob diagonally in 3D, no click of its own
    vol[1, 8, 8] = 1              # on slice 1, farther from slice 1's click than the blob
    vol[2, 8:10, 0:2] = 1         # isolated, no click
    clicks = {0: {1: np.array([[2, 2]])}, 1: {1: np.array([[0, 0]])}}  # slice 1's click misses: nearest blob
    out = keep_clicked_volume(vol, clicks)
    assert (out[0] == vol[0]).all()
    assert (out[1, 3:5, 3:5] == 1).all()
    assert out[1, 8, 8] == 0
    assert (out[2] == 0).all()


def test_volume_falls_back_to_the_nearest_region_only_when_every_click_misses():
    vol = np.zeros((2, 10, 10), np.uint8)
    vol[0, 1:4, 1:4] = 1
    vol[1, 7:9, 7:9] = 1  # a separate 3D region
    # slice 1's click misses but slice 0's hits: only slice 0's region (no nearest fallback)
    out = keep_clicked_volume(vol, {0: {1: np.array([[2, 2]])}, 1: {1: np.array([[6, 6]])}})
    assert (out[0] == vol[0]).all() and not out[1].any()
    # every click misses: each one's nearest region on its slice
    out = keep_clicked_volume(vol, {1: {1: np.array([[6, 6]])}})
    assert not out[0].any() and (out[1] == vol[1]).all()


def test_keep_clicked_modes_on_a_volume():
    vol = np.stack([two_blobs(), two_blobs()])
    clicks = {0: {1: np.array([[2, 2]]), 2: np.array([[9, 0]])}}  # slice 1 has no clicks
    assert keep_clicked(vol, clicks, "all") is vol
    per_slice = keep_clicked(vol, clicks, "clicked-slice")
    assert (per_slice[0] == keep_clicked_slice(vol[0], clicks[0])).all()
    assert (per_slice[1] == 0).all()
    per_volume = keep_clicked(vol, clicks, "clicked-volume")
    # the blobs repeat on slice 1, so they continue the clicked ones there; the far blob never is
    assert (per_volume[:, 1:4, 1:4] == 1).all() and (per_volume[:, 6:8, 6:8] == 0).all()
    assert (per_volume[:, 0, 9] == 2).all()
    assert set(KEEP_MODES) == {"all", "clicked-slice", "clicked-volume"}
    with pytest.raises(ValueError, match="keep mode"):
        keep_clicked(vol, clicks, "largest")


# ---------------------------------------------------------------- through `train eval` / `train predict`

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from evalkit import make_tiny_run
    from shared.sources import open_source

    return make_tiny_run(tmp_path_factory.mktemp("keep") / "run", open_source("demo-abdomen"), img_size=32)


def _eval(run, out, *extra):
    from clikit import run_in_process
    from train.cli import cli as train_main

    return run_in_process(train_main, "eval", "--run", run, "--dataset", "demo-abdomen", "--split", "test",
                          "--max-volumes", "1", "--num-threads", "1", "--no-progress", "--out", out, *extra)


def test_eval_keep_only_removes_voxels_and_is_recorded(tiny_run, tmp_path):
    import csv
    import json

    voxels = {}
    for mode in KEEP_MODES:
        code, text = _eval(tiny_run, tmp_path / mode, "--keep", mode)
        assert code == 0, text
        assert json.loads((tmp_path / mode / "summary.json").read_text())["keep"] == mode
        with open(tmp_path / mode / "cases.csv") as f:
            voxels[mode] = {r["class"]: int(r["pred_voxels"]) for r in csv.DictReader(f)}
    for mode in ("clicked-slice", "clicked-volume"):
        assert all(voxels[mode][c] <= voxels["all"][c] for c in voxels["all"]), (mode, voxels)
    # a 3D region kept per slice is kept over the volume too
    assert all(voxels["clicked-slice"][c] <= voxels["clicked-volume"][c] for c in voxels["all"]), voxels


def test_eval_keep_needs_point_prompts(tiny_run, tmp_path):
    code, text = _eval(tiny_run, tmp_path / "box", "--keep", "clicked-volume", "--prompt", "box")
    assert code == 2 and "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert "--keep clicked-volume" in text and "point" in text
    assert not (tmp_path / "box").exists()


def test_predict_keep_clicked_is_inside_the_full_mask(tiny_run, tmp_path):
    import json

    import nibabel as nib

    from clikit import run_in_process
    from shared.sources import open_source
    from train.cli import cli as train_main

    src = open_source("demo-abdomen")
    vol = src.load("abdomen_02")
    low, high = src.intensity["low"], src.intensity["high"]
    raw = np.rint(vol.image[13:17] * (high - low) + low).astype(np.int16).transpose(2, 1, 0)
    label = vol.label[13:17].transpose(2, 1, 0)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.diag([2.5, 2.5, 5.0, 1.0])), str(scan))
    points: dict[str, list] = {}
    for c in np.unique(label[:, :, 1])[1:4]:
        ii, jj = np.nonzero(label[:, :, 1] == c)
        points.setdefault(src.class_names[c], []).append([int(ii[len(ii) // 2]), int(jj[len(jj) // 2]), 1])
    (tmp_path / "points.json").write_text(json.dumps(points))
    masks = {}
    for mode in ("all", "clicked-slice"):
        out = tmp_path / mode / "mask.nii.gz"
        code, text = run_in_process(train_main, "predict", "--run", tiny_run, "--image", scan, "--points",
                                    tmp_path / "points.json", "--out", out, "--num-threads", "1", "--keep", mode)
        assert code == 0, text
        masks[mode] = np.asarray(nib.load(str(out)).dataobj)
    kept, full = masks["clicked-slice"], masks["all"]
    assert ((kept == 0) | (kept == full)).all()  # only removes pixels, never relabels them
    clicks = {src.class_names.index(n): np.array([[i, j] for i, j, _ in pts], float) for n, pts in points.items()}
    # slice k of the NIfTI (i, j, k) is the (row j, column i) map the clicks (x = i, y = j) are on
    assert np.array_equal(kept[:, :, 1], keep_clicked_slice(full[:, :, 1].T, clicks).T)
    assert not kept[:, :, [0, 2, 3]].any() and kept.any()

    prompts = tmp_path / "prompts.json"
    names = sorted(points)
    prompts.write_text(json.dumps({"space": "voxel", "classes": names,
                                   "prompts": [{"class": n, "point": p} for n in names for p in points[n]]}))
    code, text = run_in_process(train_main, "predict", "--run", tiny_run, "--input", scan, "--prompts", prompts,
                                "--propagate", "--keep", "clicked-slice", "--out", tmp_path / "prop",
                                "--num-threads", "1")
    assert code == 2 and "Traceback" not in text and "--keep clicked-volume" in text, text
    assert not (tmp_path / "prop").exists()
    code, text = run_in_process(train_main, "predict", "--run", tiny_run, "--input", scan, "--prompts", prompts,
                                "--propagate", "--keep", "clicked-volume", "--out", tmp_path / "prop3d",
                                "--num-threads", "1")
    assert code == 0, text
