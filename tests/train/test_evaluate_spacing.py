"""`train eval --spacing`: slices resampled for the model, masks and metrics on the volume's own grid."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from clikit import run_in_process
from evalkit import make_tiny_run
from shared.sources import open_source
from train.cli import cli as train_main
from train.evaluate import EvalOptions, predict_on_grid
from train.inference import Inference, load_run_model
from train.testsets import open_source_testset


def test_predict_on_grid_returns_masks_on_the_original_grid(tmp_path):
    source = open_source("demo-abdomen")
    run = make_tiny_run(tmp_path / "run", source, img_size=32)
    loaded = load_run_model(run)
    inf = Inference(loaded.model.eval(), torch.device("cpu"), 8)
    vol = open_source_testset("demo-abdomen", None, "test").load("abdomen_02")
    vol.image, vol.label = vol.image[14:18], vol.label[14:18]  # four organ slices keep it fast
    prompts: dict = {}
    with torch.inference_mode():
        pred, n = predict_on_grid(inf, vol, 8, EvalOptions(spacing=5.0), None, prompts)
        native, n2 = predict_on_grid(inf, vol, 8, EvalOptions(), None)
    assert pred.shape == vol.label.shape == native.shape and pred.dtype == np.uint8 and n == n2 == 4
    assert set(np.unique(pred)) <= set(np.unique(vol.label))
    k = next(iter(prompts))
    for c, p in prompts[k]:  # prompts mapped back to source pixels: inside the class there
        x, y = np.rint(p.points[0]).astype(int)
        assert vol.label[k, y, x] == c


def test_eval_cli_records_the_spacing_and_saves_native_masks(tmp_path):
    source = open_source("demo-abdomen")
    run = make_tiny_run(tmp_path / "run", source, img_size=32)
    out = tmp_path / "ev"
    code, text = run_in_process(train_main, "eval", "--run", run, "--dataset", "demo-abdomen", "--split", "test",
                                "--spacing", "5", "--max-volumes", "1", "--save-predictions", "--num-threads", "1",
                                "--no-progress", "--out", out)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["spacing"] == 5.0
    saved = nib.load(str(next((out / "predictions").glob("*.nii.gz"))))
    assert saved.shape == (128, 128, 32)  # the volume's own (i, j, k) grid, not the 64 x 64 one
    np.testing.assert_allclose(saved.affine, np.diag([2.5, 2.5, 5.0, 1.0]))
    code, text = run_in_process(train_main, "eval", "--run", run, "--dataset", "demo-abdomen", "--split", "test",
                                "--spacing", "-2", "--out", tmp_path / "bad")
    assert code == 2 and "--spacing '-2'" in text and "Traceback" not in text


def test_keep_runs_on_the_resampled_grid_and_only_removes(tmp_path):
    """--keep with --spacing: the regions are found where the model predicted (the resampled grid),
    then the mask goes back; it can only remove what the same evaluation without --keep predicts."""
    source = open_source("demo-abdomen")
    run = make_tiny_run(tmp_path / "run", source, img_size=32)
    loaded = load_run_model(run)
    inf = Inference(loaded.model.eval(), torch.device("cpu"), 8)
    vol = open_source_testset("demo-abdomen", None, "test").load("abdomen_02")
    vol.image, vol.label = vol.image[14:18], vol.label[14:18]
    with torch.inference_mode():
        full, _ = predict_on_grid(inf, vol, 8, EvalOptions(spacing=5.0), None)
        kept, _ = predict_on_grid(inf, vol, 8, EvalOptions(spacing=5.0, keep="clicked-volume"), None)
    assert kept.shape == full.shape == vol.label.shape
    assert ((kept == 0) | (kept == full)).all() and kept.any()
