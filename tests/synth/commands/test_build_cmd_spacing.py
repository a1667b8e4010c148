"""`synth build` / `synth pack` / `synth select` --spacing: resampled samples, recorded in the manifests."""
from __future__ import annotations

import json

import numpy as np

from clikit import run_in_process
from shared import open_dataset
from synth.cli import cli as synth_main


def test_build_records_the_spacing_and_samples_are_resampled(tmp_path):
    out = tmp_path / "ds5"
    code, text = run_in_process(synth_main, "build", "--dataset", "demo-abdomen", "--exemplars", "1",
                                "--num-samples", "6", "--spacing", "5", "--workers", "1", "--no-progress",
                                "--out", out)
    assert code == 0, text
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["options"]["spacing"] == 5.0 and info["config"]["spacing"] == 5.0
    ds = open_dataset(out)
    assert ds[0]["image"].shape == (64, 64)  # the phantoms' 128 x 128 at 2.5 mm -> 5 mm
    native = tmp_path / "native"
    code, text = run_in_process(synth_main, "build", "--dataset", "demo-abdomen", "--exemplars", "1",
                                "--num-samples", "2", "--workers", "1", "--no-progress", "--out", native)
    assert code == 0, text
    info = json.loads((native / "dataset.json").read_text())
    assert "spacing" not in info["config"] and "spacing" not in info["source"]["options"]  # bytes as before
    assert open_dataset(native)[0]["image"].shape == (128, 128)


def test_pack_and_list_carry_the_spacing(tmp_path):
    packed = tmp_path / "pack"
    code, text = run_in_process(synth_main, "pack", "--dataset", "demo-abdomen", "--spacing", "5", "--workers", "1",
                                "--no-progress", "--out", packed)
    assert code == 0, text
    vol = json.loads((packed / "dataset.json").read_text())["volumes"][0]
    assert vol["spacing"][1:] == [5.0, 5.0] and vol["shape"][1:] == [64, 64]
    assert np.asarray(vol["affine"])[0, 0] == 5.0
    listing = tmp_path / "list.json"
    code, text = run_in_process(synth_main, "select", "--dataset", "demo-abdomen", "--exemplars", "1",
                                "--spacing", "5", "--workers", "1", "--no-progress", "--out", listing)
    assert code == 0, text
    assert json.loads(listing.read_text())["dataset"]["options"]["spacing"] == 5.0
    code, text = run_in_process(synth_main, "build", "--exemplar-list", listing, "--num-samples", "2",
                                "--spacing", "native", "--workers", "1", "--no-progress", "--out", tmp_path / "x")
    assert code == 2 and "made at spacing 5.0" in text and "Traceback" not in text
    code, text = run_in_process(synth_main, "build", "--exemplar-list", listing, "--num-samples", "2",
                                "--workers", "1", "--no-progress", "--out", tmp_path / "y")
    assert code == 0, text
    assert json.loads((tmp_path / "y" / "dataset.json").read_text())["source"]["options"]["spacing"] == 5.0


def test_bad_spacing_is_a_one_line_error(tmp_path):
    code, text = run_in_process(synth_main, "build", "--dataset", "demo-abdomen", "--exemplars", "1",
                                "--spacing", "fine", "--out", tmp_path / "z")
    assert code == 2 and "--spacing 'fine'" in text and "Traceback" not in text
    assert len([l for l in text.strip().splitlines() if l.startswith("error")]) == 1
