"""`synth select` end to end through the installed CLI: outputs, summaries, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest

from waitkit import HANG

PROJECT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((PROJECT / "data_manifests/schemas/exemplar_list.schema.json").read_text())


def synth(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("synth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "synth"]
    return subprocess.run(cmd + ["select", *args, "--no-progress"], capture_output=True, text=True,
                          timeout=HANG)  # a bound against a hang, not a speed


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_select_brats_sample_percent(tmp_path, brats_root):
    out = tmp_path / "brats_1pct.json"
    proc = synth("--dataset", "brats", "--root", str(brats_root), "--split", "all", "--exemplars", "1%",
                 "--seed", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3 exemplars (random-slices, 309 eligible slices in 4 case(s), split all)")
    assert "background pool 185 slices" in proc.stdout
    data = json.loads(out.read_text())
    jsonschema.validate(data, SCHEMA)
    assert len(data["exemplars"]) == 3 and data["seed"] == 3 and data["dataset"]["options"] == {"modality": "flair"}
    # refuses to overwrite, then does with --overwrite
    again = synth("--dataset", "brats", "--root", str(brats_root), "--split", "all", "--exemplars", "1%",
                  "--out", str(out))
    assert_clean_error(again, str(out), "already exists", "--overwrite")
    assert json.loads(out.read_text())["seed"] == 3
    # train split (the default): only the 3 training cases
    train = synth("--dataset", "brats", "--root", str(brats_root), "--exemplars", "2", "--out", str(tmp_path / "t.json"))
    assert train.returncode == 0, train.stderr
    assert {e["volume"] for e in json.loads((tmp_path / "t.json").read_text())["exemplars"]} <= {
        "Brats18_2013_3_1", "Brats18_2013_4_1", "Brats18_2013_6_1"}


def test_select_synapse_sample(tmp_path, synapse_root):
    out = tmp_path / "syn.json"
    proc = synth("--dataset", "synapse", "--root", str(synapse_root), "--split", "all", "--exemplars", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 exemplars (most-organs, 30 eligible slices in 1 case(s), split all)")
    assert [(e["volume"], e["slice"]) for e in json.loads(out.read_text())["exemplars"]] == [("0001", 12), ("0001", 13)]
    # the sample's only case is a TransUNet test case: the default train split is empty
    empty = synth("--dataset", "synapse", "--root", str(synapse_root), "--exemplars", "1", "--out", str(tmp_path / "e.json"))
    assert_clean_error(empty, "split 'train'", "is empty", "--split all")
    assert not (tmp_path / "e.json").exists()


def test_select_demo_and_debug_traceback(tmp_path):
    out = tmp_path / "demo.json"
    proc = synth("--dataset", "demo-abdomen", "--exemplars", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "1 exemplars (most-organs" in proc.stdout and "liver" in proc.stdout
    jsonschema.validate(json.loads(out.read_text()), SCHEMA)
    too_many = synth("--dataset", "demo", "--exemplars", "5000", "--out", str(tmp_path / "x.json"))
    assert_clean_error(too_many, "asked for 5000 exemplars but only", "slices of the 6 chosen case(s)")
    debug = synth("--dataset", "demo", "--exemplars", "5000", "--out", str(tmp_path / "x.json"), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not (tmp_path / "x.json").exists()


def test_select_bad_inputs_are_one_line(tmp_path):
    bad_spec = synth("--dataset", "demo", "--exemplars", "lots", "--out", str(tmp_path / "a.json"))
    assert_clean_error(bad_spec, "--exemplars 'lots'")
    missing = synth("--dataset", "brats", "--root", str(tmp_path / "nowhere"), "--exemplars", "1", "--out", str(tmp_path / "a.json"))
    assert_clean_error(missing, "nowhere", "folder not found")
    # a truncated scan in a hospital folder
    root = tmp_path / "hosp"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    nib.save(nib.Nifti1Image(np.arange(32 * 32 * 8, dtype=np.int16).reshape(32, 32, 8), np.eye(4)), str(root / "images/p1.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.uint8), np.eye(4)), str(root / "labels/p1.nii.gz"))
    data = (root / "images/p1.nii.gz").read_bytes()
    (root / "images/p1.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "source.json").write_text(json.dumps({"classes": ["background", "lesion"], "intensity": "ct-abdomen"}))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["p1"]}))
    proc = synth("--dataset", "nifti", "--root", str(root), "--split-file", str(split), "--exemplars", "1", "--out", str(tmp_path / "a.json"))
    assert_clean_error(proc, "p1.nii.gz", "unreadable or truncated NIfTI")
    assert not (tmp_path / "a.json").exists()
