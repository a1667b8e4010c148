"""`train predict --spacing`: the scan resampled in-plane for the model, the mask on the scan's own grid."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from clikit import run_in_process
from evalkit import make_tiny_run
from shared.errors import ConfigError
from shared.sources import open_source, preprocess_raw
from train.cli import cli as train_main
from train.predict import resampled_scan, run_spacing

# in-plane pixels of 2.5 mm along i (columns) and 2 mm along j (rows), so an axis swap would show
AFFINE = np.array([[-2.5, 0, 0, 90.0], [0, 2.0, 0, -60.0], [0, 0, 5.0, 12.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny run on demo-abdomen (no spacing recorded), the same run recording 5 mm, and a raw
    int16 NIfTI of four organ slices (128 x 100 x 4 in (i, j, k)) with clicks on two of them."""
    root = tmp_path_factory.mktemp("predict_spacing")
    src = open_source("demo-abdomen")
    run = make_tiny_run(root / "run", src, img_size=32)
    run5 = root / "run5"  # the same weights, as if trained on data built at --spacing 5
    shutil.copytree(run, run5)
    config = json.loads((run5 / "config.json").read_text())
    config["dataset"]["source"].setdefault("options", {})["spacing"] = 5.0
    (run5 / "config.json").write_text(json.dumps(config))
    vol = src.load("abdomen_02")
    low, high = src.intensity["low"], src.intensity["high"]
    raw = np.rint(vol.image[13:17] * (high - low) + low).astype(np.int16).transpose(2, 1, 0)[:, 14:114]
    label = vol.label[13:17].transpose(2, 1, 0)[:, 14:114]  # (i, j, k) like raw
    scan = root / "scan.nii.gz"
    nib.save(nib.Nifti1Image(raw, AFFINE), str(scan))
    points: dict[str, list] = {}
    for k in (1, 2):
        for c in np.unique(label[:, :, k])[1:4]:
            ii, jj = np.nonzero(label[:, :, k] == c)
            points.setdefault(src.class_names[c], []).append([int(ii[len(ii) // 2]), int(jj[len(jj) // 2]), k])
    (root / "points.json").write_text(json.dumps(points))
    clicked = {src.class_names.index(name) for name in points}
    return {"root": root, "run": run, "run5": run5, "scan": scan, "raw": raw, "src": src, "clicked": clicked,
            "classes": list(src.class_names)}


def _predict_points(case, run, name, *spacing):
    out = case["root"] / name / "mask.nii.gz"  # in a folder of its own: a failed run must leave none
    code, text = run_in_process(train_main, "predict", "--run", run, "--image", case["scan"],
                                "--points", case["root"] / "points.json", "--out", out, "--num-threads", "1",
                                *(("--spacing", *spacing) if spacing else ()))
    return code, text, out


def _mask(case, out):
    img = nib.load(str(out))
    assert img.shape == case["raw"].shape  # the scan's own (i, j, k) grid, not the resampled one
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.get_data_dtype() == np.uint8
    return np.asarray(img.dataobj)


def test_run_spacing_and_resampled_scan(case):
    assert run_spacing({}) is None and run_spacing(json.loads((case["run"] / "config.json").read_text())) is None
    recorded = json.loads((case["run5"] / "config.json").read_text())
    assert run_spacing(recorded) == 5.0  # "run": the spacing the training data was built at
    assert run_spacing(recorded, "native") is None and run_spacing(recorded, None) is None
    assert run_spacing(recorded, "2.5mm") == 2.5 and run_spacing({}, 4) == 4.0
    with pytest.raises(ConfigError, match="the run's dataset.source.options.spacing"):
        run_spacing({"dataset": {"source": {"options": {"spacing": -1}}}})
    native = preprocess_raw(case["raw"], case["src"].intensity)  # (S, R, C) = (k, j, i)
    assert native.shape == (4, 100, 128)
    assert resampled_scan(native, AFFINE, None) is native
    five = resampled_scan(native, AFFINE, 5.0)
    # rows (j) 100 x 2 mm and columns (i) 128 x 2.5 mm, both 5 mm now: the same field of view
    assert five.shape == (4, 40, 64) and five.dtype == np.float32
    assert abs(float(five.mean()) - float(native.mean())) < 0.02


def test_predict_at_5_mm_writes_the_mask_on_the_scans_grid(case):
    code, text, out = _predict_points(case, case["run"], "five", "5")
    assert code == 0, text
    assert "2 slice(s) segmented" in text and "at 5 mm in-plane" in text
    five = _mask(case, out)
    assert set(np.unique(five)) <= {0} | case["clicked"]  # the run's classes, only those clicked
    assert set(np.flatnonzero(five.reshape(-1, five.shape[2]).any(0))) <= {1, 2}  # only the clicked slices
    assert (five > 0).any()

    # no spacing recorded with the run: the default is native, exactly `--spacing native`
    code, text, default_out = _predict_points(case, case["run"], "default")
    assert code == 0, text
    code, text, native_out = _predict_points(case, case["run"], "native", "native")
    assert code == 0, text
    assert "mm in-plane" not in text
    default, native = _mask(case, default_out), _mask(case, native_out)
    assert np.array_equal(default, native)
    # 5 mm is not a no-op: the model saw other pixels, so the mask differs from the native one
    assert not np.array_equal(five, native)

    # a run recording 5 mm: its default is 5 mm, and --spacing native still overrides it
    code, text, rec_out = _predict_points(case, case["run5"], "recorded")
    assert code == 0, text
    assert "at 5 mm in-plane" in text  # the summary says the run's recorded spacing was applied
    assert np.array_equal(_mask(case, rec_out), five)
    code, text, over_out = _predict_points(case, case["run5"], "override", "native")
    assert code == 0, text
    assert np.array_equal(_mask(case, over_out), native)


def test_prompt_file_mode_reports_the_spacing(case):
    prompts = case["root"] / "prompts.json"
    points = json.loads((case["root"] / "points.json").read_text())
    names = sorted(points)
    prompts.write_text(json.dumps({"space": "voxel", "classes": names,
                                   "prompts": [{"class": n, "point": p} for n in names for p in points[n]]}))

    def predict(name, *extra):
        out = case["root"] / name
        return (*run_in_process(train_main, "predict", "--run", case["run"], "--input", case["scan"],
                                "--prompts", prompts, "--out", out, "--num-threads", "1", *extra), out)

    code, text, out = predict("p5", "--spacing", "5")
    assert code == 0, text
    assert "at 5 mm in-plane" in text  # what the summary line records
    five = _mask(case, out / "scan.nii.gz")
    assert set(np.unique(five)) <= set(range(len(names) + 1))  # labels 1..N of the prompt file's classes
    code, text, out = predict("pnative")
    assert code == 0, text
    assert "mm in-plane" not in text  # the run records no spacing: native
    assert not np.array_equal(_mask(case, out / "scan.nii.gz"), five)


@pytest.mark.parametrize("mode", ["image", "input"])
def test_bad_spacing_is_one_line_and_leaves_nothing(case, mode):
    folder = case["root"] / f"bad-{mode}"
    if mode == "image":
        args = ("--image", case["scan"], "--points", case["root"] / "points.json", "--out", folder / "m.nii.gz")
    else:
        prompts = folder.parent / "bad-prompts.json"
        prompts.write_text(json.dumps({"space": "voxel", "classes": ["spleen"],
                                       "prompts": [{"class": "spleen", "point": [0, 0, 1]}]}))
        args = ("--input", case["scan"], "--prompts", prompts, "--out", folder)
    code, text = run_in_process(train_main, "predict", "--run", case["run"], *args, "--spacing", "-2",
                                "--num-threads", "1")
    assert code == 2, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert text.startswith("error: ") and "--spacing '-2'" in text
    assert not folder.exists()
