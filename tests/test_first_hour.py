"""Issue 14, a new user's first hour: each stumble replayed (fast failure before torch, thread
defaults, consistent sample identifiers, self-explaining manifests, source hints, reports,
overlays, progress in logs, no empty run folders)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit import run_train
from waitkit import HANG

ROOT = Path(__file__).resolve().parents[1]


def _cli_in_subprocess(tool: str, args: list[str], env: dict | None = None) -> dict:
    """Run `tool` (train/synth) through its entry point in a fresh interpreter; report the exit
    code, stderr, whether torch got imported and what OMP_WAIT_POLICY torch would have seen."""
    code = (
        "import json, os, sys\n"
        f"from {tool}.cli import main\n"
        f"sys.argv = [{tool!r}] + {args!r}\n"
        "rc = 0\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules,"
        " 'omp': os.environ.get('OMP_WAIT_POLICY')}))\n")
    full_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=HANG)  # a bound against a hang, not a speed
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["err"] = proc.stderr
    return out


# ---------------------------------------------------------------------------------------------
# Fast failure: arguments and paths are checked before torch is imported


def test_fit_and_predict_fail_before_importing_torch(tmp_path):
    r = _cli_in_subprocess("train", ["fit", "--shards", str(tmp_path / "MISSING"), "--model", "tiny",
                                     "--out", str(tmp_path / "run")])
    assert r["rc"] == 2 and not r["torch"], r
    assert "--shards" in r["err"] and "MISSING" in r["err"] and "does not exist" in r["err"]
    assert not (tmp_path / "run").exists()
    (tmp_path / "parent" / "ds" / "shards").mkdir(parents=True)
    (tmp_path / "parent" / "ds" / "dataset.json").write_text("{}")
    r = _cli_in_subprocess("train", ["fit", "--shards", str(tmp_path / "parent"), "--out", str(tmp_path / "run"),
                                     "--model", "tiny"])
    assert r["rc"] == 2 and not r["torch"] and "did you mean" in r["err"], r
    r = _cli_in_subprocess("train", ["fit", "--shards", str(tmp_path / "parent" / "ds"), "--out", str(tmp_path / "r"),
                                     "--model", "vit_b", "--steps", "2"])
    assert r["rc"] == 2 and not r["torch"] and "--checkpoint" in r["err"], r
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    for args, needle in (
            (["--image", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o.nii.gz")], "scan not found"),
            (["--image", str(run / "config.json"), "--out", str(tmp_path / "o.nii.gz")], "NIfTI"),
    ):
        r = _cli_in_subprocess("train", ["predict", "--run", str(run), *args])
        assert r["rc"] == 2 and not r["torch"] and needle in r["err"], r
    r = _cli_in_subprocess("train", ["eval", "--run", str(tmp_path / "nope"), "--dataset", "demo-brain",
                                     "--out", str(tmp_path / "ev")])
    assert r["rc"] == 2 and not r["torch"] and "run directory not found" in r["err"], r


def test_train_entry_point_sets_passive_openmp_wait_unless_the_user_chose(tmp_path):
    r = _cli_in_subprocess("train", ["fit", "--shards", str(tmp_path / "x"), "--out", str(tmp_path / "r")])
    assert r["omp"] == "PASSIVE"
    r = _cli_in_subprocess("train", ["fit", "--shards", str(tmp_path / "x"), "--out", str(tmp_path / "r")],
                           env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert r["omp"] == "ACTIVE"
    from train.threads import apply_env_defaults

    env: dict[str, str] = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply_env_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}  # the user's choice is kept (or torch already loaded)


def test_failed_fit_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    import train.fit
    from shared.errors import DataError

    def boom(cfg, shards, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "config.json").write_text("{}")
        raise DataError(f"{shards}: shard 0 is truncated")

    monkeypatch.setattr(train.fit, "fit", boom)
    ds = tmp_path / "ds"
    (ds / "shards").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"num_samples": 4}))
    code, _, err = run_train(["fit", "--shards", ds, "--model", "tiny", "--steps", "2", "--out", tmp_path / "a" / "run"],
                             capsys)
    assert code == 2 and "truncated" in err
    assert not (tmp_path / "a" / "run").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    code, _, err = run_train(["fit", "--shards", ds, "--model", "tiny", "--steps", "2", "--out", keep], capsys)
    assert code == 2 and keep.is_dir()  # a folder the user made stays


def test_tiny_has_real_default_steps_and_a_config_file_can_still_ask_for_epochs(tmp_path):
    from train.config import resolve_config

    assert resolve_config(None, {"model": "tiny"}).steps == 2000
    assert resolve_config(None, {"model": "vit_b"}).steps is None
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"epochs": 2}))
    cfg = resolve_config(cfg_file, {"model": "tiny"})
    assert cfg.epochs == 2.0 and cfg.steps is None
    assert resolve_config(cfg_file, {"model": "tiny", "steps": 5}).steps == 5


# ---------------------------------------------------------------------------------------------
# synth: identifiers, manifests, sources


@pytest.fixture(scope="module")
def demo_ds(tmp_path_factory):
    from shared.cli_support import run_cli
    from synth.cli import cli

    out = tmp_path_factory.mktemp("first_hour") / "ds"
    run_cli(cli, ["build", "--exemplar-list", str(ROOT / "data_manifests/exemplars/demo_brain_3pct.json"),
                  "--num-samples", "40", "--shard-size", "16", "--workers", "1", "--no-progress", "--out", str(out)])
    return out


def test_build_takes_dataset_from_the_exemplar_list_and_manifest_explains_itself(demo_ds):
    from shared.manifest import read_json, read_samples, validate

    info = read_json(demo_ds / "dataset.json")
    assert info["source"]["name"] == "demo-brain" and info["num_samples"] == 40
    text = (demo_ds / "dataset.json").read_text()
    assert text.index('"_about"') < text.index('"_sample_fields"') < text.index('"background_pool"')
    assert info["_about"][0].startswith("40 synthesized samples of demo-brain")
    assert "degrees" in info["_sample_fields"]["params"] and "[column, row]" in info["_sample_fields"]["synthesis.objects[]"]
    validate(info, "dataset")
    records = read_samples(demo_ds)
    for rec in records:
        validate(rec, "sample")
        assert all("class" not in o for o in rec["synthesis"]["objects"])  # no "class": null beside "classes"
    assert records[20]["shard"] == 1 and records[20]["index"] == 4  # index counts inside the shard


def test_trace_and_show_take_the_same_sample_identifiers(demo_ds):
    from shared.errors import DataError
    from synth.audit.info import find_sample

    assert find_sample(demo_ds, "s000012")["id"] == "s000012"
    assert find_sample(demo_ds, "12")["id"] == "s000012"
    with pytest.raises(DataError, match="out of range"):
        find_sample(demo_ds, "40")
    with pytest.raises(DataError, match="0-based sample number"):
        find_sample(demo_ds, "x12")


def test_old_records_with_class_null_replay_bit_identically():
    from synth.synthesis.sample import replay, synthesize
    from synth.synthesis.config import load_config
    from synthkit import brain_bank

    bank, cfg = brain_bank(), load_config()
    image, label, rec = synthesize(3, 0, bank, cfg, "single")
    assert "class" not in rec["objects"][0]
    old = json.loads(json.dumps(rec))
    for o in old["objects"]:
        o["class"] = None  # how records were written before
    image2, label2 = replay(old, bank, cfg)
    assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()


def test_demo_source_refuses_a_root_and_wrong_roots_get_hints(tmp_path):
    from shared.errors import ConfigError, DataError
    from shared.sources import open_source
    from synth.building.jobs import reopen_source

    with pytest.raises(ConfigError, match="reads no folder"):
        open_source("demo-brain", tmp_path)
    (tmp_path / "MICCAI_BraTS_2018" / "HGG").mkdir(parents=True)
    with pytest.raises(DataError, match=r"use --root .*MICCAI_BraTS_2018"):
        open_source("brats", tmp_path)
    (tmp_path / "Synapse" / "RawData" / "Training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"use --root .*Synapse"):
        open_source("synapse", tmp_path)
    moved = {"source": {"name": "brats", "root": str(tmp_path / "gone"), "options": {"modality": "flair"}}}
    with pytest.raises(DataError, match="--source-root"):
        reopen_source(moved)


def test_build_without_dataset_or_list_says_what_to_give(tmp_path, capsys):
    from shared.cli_support import run_cli
    from synth.cli import cli

    with pytest.raises(SystemExit) as e:
        run_cli(cli, ["build", "--exemplars", "3", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--dataset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# train report / eval messages


def _fake_eval(d: Path, source: str, volumes: list[str], prompt: str, pred_voxels: int = 5) -> Path:
    d.mkdir(parents=True)
    summary = {"mean_dsc": 0.5, "mean_hd95": 3.0, "per_class": {"tumour": {"dsc": 0.5, "hd95": 3.0, "n_volumes": 1}},
               "n_volumes": len(volumes), "class_names": ["background", "tumour"], "prompt": prompt,
               "dataset": {"kind": "source", "source": {"name": source}}}
    (d / "summary.json").write_text(json.dumps(summary))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["volume", "class", "dsc", "hd95", "gt_voxels", "pred_voxels", "note"])
    for v in volumes:
        w.writerow([v, "tumour", "0.5", "3.0", 10, pred_voxels, ""])
    (d / "cases.csv").write_text(buf.getvalue())
    return d


def test_report_shows_prompt_and_warns_on_mixed_test_data(tmp_path, capsys):
    a = _fake_eval(tmp_path / "a", "brats", ["c1"], "center")
    b = _fake_eval(tmp_path / "b", "brats", ["c1"], "random")
    c = _fake_eval(tmp_path / "c", "synapse", ["0001"], "center")
    code, out, err = run_train(["report", a, b], capsys)
    assert code == 0 and "| Method | Prompt |" in out and "| a | center |" in out and "| b | random |" in out
    assert "warning" not in err
    code, out, err = run_train(["report", a, c], capsys)
    assert code == 0 and "warning: the evaluations were scored on different test data" in err and "synapse" in err


def test_all_empty_predictions_are_reported(tmp_path):
    from train.commands.eval_cmd import all_predictions_empty

    assert all_predictions_empty(_fake_eval(tmp_path / "e", "brats", ["c1", "c2"], "center", 0) / "cases.csv") \
        == "2 volumes x 1 class"
    assert all_predictions_empty(_fake_eval(tmp_path / "f", "brats", ["c1"], "center", 3) / "cases.csv") == ""


# ---------------------------------------------------------------------------------------------
# progress bars in logs, overlays


def test_progress_bars_write_lines_not_carriage_returns_when_piped():
    from tqdm import tqdm

    from shared.cli_support import ProgressLines

    sink = io.StringIO()
    stream = ProgressLines(sink)
    bar = tqdm(total=50, file=stream, mininterval=0, desc="work", ascii=True)
    for _ in range(50):
        bar.update(1)
    bar.close()
    stream.write("done\n")
    text = sink.getvalue()
    assert "\r" not in text and text.endswith("done\n")
    lines = text.splitlines()
    assert lines[-2].startswith("work: 100%") and len(lines) == len(set(lines))


def test_overlay_orientation_is_radiological():
    from train.overlays import display_orientation, orient

    ras = np.diag([3.0, 3.0, 3.0, 1.0])        # Synapse sample: i -> R, j -> A (spine at the top as stored)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])      # BraTS: i -> L, j -> P (already radiological)
    assert display_orientation(ras) == (False, True, True)
    assert display_orientation(lps) == (False, False, False)
    swapped = np.array([[0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # i -> P, j -> R
    how = display_orientation(swapped)
    assert how is not None and how[0]
    a = np.arange(12).reshape(3, 4)
    (b,), pts = orient([a], [(1, 0, 0)], (False, True, True))
    assert b[0, 0] == a[2, 3] and pts == [(1, 3, 2)]
    assert display_orientation(None) is None


def test_overlay_legend_matches_fills_and_small_truth_stays_visible(tmp_path):
    from train.overlays import CLASS_BGR, POINT_BGR, render_overlay

    image = np.full((64, 64), 0.3, np.float32)
    label = np.zeros((64, 64), np.uint8)
    label[30:33, 30:33] = 1  # a 3x3 ground truth under the prompt point
    pred = np.zeros_like(label)
    pred[10:30, 10:30] = 2
    pic = render_overlay(image, label, pred, "t", ("background", "spleen", "liver"), [(1, 31, 31)],
                         affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    colours = {tuple(int(v) for v in px) for px in pic.reshape(-1, 3)}
    assert CLASS_BGR[0] in colours  # class 1's ground-truth outline in its own colour (not one green)
    assert POINT_BGR in colours
    body = pic[-64 * 6:]
    scale = 6
    centre = body[31 * scale:32 * scale, 31 * scale:32 * scale].reshape(-1, 3)
    assert not (centre == POINT_BGR).all(1).any()  # hollow cross: the small truth is not hidden


def test_worst_slices_skip_slivers():
    from train.evaluate import collect_worst
    from train.testsets import EvalVolume

    label = np.zeros((4, 40, 40), np.uint8)
    label[0, 0:2, 0:2] = 1          # a 4-pixel sliver (tumour end), missed entirely
    label[1, 5:35, 5:35] = 1        # big slices
    label[2, 5:35, 5:35] = 1
    pred = label.copy()
    pred[0] = 0
    pred[2, 5:20] = 0               # the big slice half missed
    vol = EvalVolume("v", np.zeros(label.shape, np.float32), label, (1.0, 1.0, 1.0), np.eye(4))
    heap: list = []
    collect_worst(heap, 0, 1, vol, pred, {})
    assert heap[0][2]["slice"] == 2


def test_dataset_affine_for_the_radiological_sheet(tmp_path):
    import nibabel as nib

    from shared.orientation import dataset_affine, display_orientation

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.diag([3.0, 3.0, 3.0, 1.0])), str(tmp_path / "img.nii.gz"))
    info = {"source": {"name": "synapse", "root": str(tmp_path)},
            "exemplars": [{"volume": "0001", "slice": 0, "files": {"image_file": "img.nii.gz"}}]}
    assert display_orientation(dataset_affine(info)) == (False, True, True)
    assert dataset_affine({"source": {"name": "demo-brain", "root": None}, "exemplars": []}) is None
    assert dataset_affine({**info, "source": {"name": "synapse", "root": str(tmp_path / "gone")}}) is None
