"""`train eval` / `train report` end to end with a tiny run: sources vs packed shards, reports,
per-organ tables, prompt modes, bad input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evalkit import make_tiny_run, pack_volumes, run_train
from shared.sources import open_source


def summary(evaldir) -> dict:
    return json.loads((evaldir / "summary.json").read_text())


def cases(evaldir) -> list[dict]:
    with open(evaldir / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def brain_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-brain", open_source("demo-brain"))


def test_demo_source_and_packed_shards_give_the_same_numbers(brain_run, tmp_path, capsys):
    packed = pack_volumes(tmp_path / "packed", "demo-brain", None, "test")
    a, b = tmp_path / "ev_source", tmp_path / "ev_shards"
    code, out, err = run_train(["eval", "--run", brain_run, "--dataset", "demo-brain", "--split", "test",
                                "--out", a, "--num-threads", "1"], capsys)
    assert code == 0, err
    assert "| Method | DSC (%) | HD95 (mm) |" in out and "slices/s" in out
    code, out, err = run_train(["eval", "--run", brain_run, "--shards", packed, "--out", b,
                                "--num-threads", "1", "--no-progress"], capsys)
    assert code == 0, err
    sa, sb = summary(a), summary(b)
    for key in ("mean_dsc", "mean_hd95", "per_class", "n_volumes", "slices"):
        assert sa[key] == sb[key], key
    assert cases(a) == cases(b)
    assert sa["n_volumes"] >= 1 and 0.0 <= sa["mean_dsc"] <= 1.0 and sa["mean_hd95"] > 0
    assert sa["prompt"] == "center" and sa["run"].endswith("tiny-brain")
    assert sa["dataset"]["kind"] == "source" and sb["dataset"]["kind"] == "shards"
    rows = cases(a)
    assert {r["class"] for r in rows} == {"tumour"} and all(int(r["gt_voxels"]) > 0 for r in rows)
    # over-/under-segmentation columns: pred/true volume and mean signed surface distance (mm)
    for r in rows:
        assert float(r["volume_ratio"]) == pytest.approx(int(r["pred_voxels"]) / int(r["gt_voxels"]), abs=1e-4)
        assert (r["mssd"] == "NaN") == (int(r["pred_voxels"]) == 0)
    ratios = [float(r["volume_ratio"]) for r in rows]
    assert sa["median_volume_ratio"] == pytest.approx(float(np.median(ratios)), abs=1e-4)
    assert sa["per_class"]["tumour"]["volume_ratio_median"] == pytest.approx(sa["median_volume_ratio"])
    assert "positive" in sa["mssd_sign"] and "outside" in sa["mssd_sign"]
    table = (a / "table.md").read_text().splitlines()
    assert table[0] == "| Method | DSC (%) | HD95 (mm) |"
    assert table[2].startswith("| tiny-brain | ") and f"{100 * sa['mean_dsc']:.2f}" in table[2]


def test_random_prompts_are_seeded_and_none_needs_a_promptless_run(brain_run, tmp_path, capsys):
    outs = []
    for name, seed in (("r1", 5), ("r2", 5), ("r3", 6)):
        code, _, err = run_train(["eval", "--run", brain_run, "--dataset", "demo-brain", "--split", "test",
                                  "--prompt", "random", "--seed", seed, "--out", tmp_path / name], capsys)
        assert code == 0, err
        outs.append(cases(tmp_path / name))
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    code, _, err = run_train(["eval", "--run", brain_run, "--dataset", "demo-brain", "--prompt", "none",
                              "--out", tmp_path / "none"], capsys)
    assert code == 2 and err.startswith("error: ") and "promptless" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_promptless_run_predicts_every_slice(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "tiny-none", open_source("demo-brain"), prompt="none")
    code, _, err = run_train(["eval", "--run", run, "--dataset", "demo-brain", "--split", "test",
                              "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    s = summary(tmp_path / "ev")
    assert s["prompt"] == "none"
    from shared.splits import resolve_split

    src = open_source("demo-brain")
    n_slices = sum(src.num_slices(v) for v in resolve_split(src, "test"))
    assert s["slices"] == n_slices


@pytest.mark.shared_data
def test_synapse_sample_per_organ_table_predictions_and_overlays(tmp_path, capsys, synapse_root):
    import nibabel as nib

    src = open_source("synapse", synapse_root)
    run = make_tiny_run(tmp_path / "tiny-synapse", src)
    ev = tmp_path / "ev"
    code, out, err = run_train(["eval", "--run", run, "--dataset", "synapse", "--root", synapse_root,
                                "--split", "all", "--out", ev, "--save-predictions", "--overlays",
                                "--overlay-count", "3"], capsys)
    assert code == 0, err
    s = summary(ev)
    organs = list(src.class_names[1:])
    assert len(organs) == 8 and list(s["per_class"]) == organs
    header = (ev / "table.md").read_text().splitlines()[0]
    assert header.startswith("| Method | DSC (%) | HD95 (mm) | spleen | right kidney |")
    assert header.count("|") == 3 + 8 + 1
    assert len(cases(ev)) == 8 * s["n_volumes"]
    # mean DSC is the mean of the per-organ means
    per = [v["dsc"] for v in s["per_class"].values() if v["dsc"] is not None]
    assert s["mean_dsc"] == pytest.approx(float(np.mean(per)))
    # predictions: source affine, NIfTI order, task indices
    case = src.case_ids()[0]
    pred = nib.load(ev / "predictions" / f"{case}.nii.gz")
    lab = nib.load(src.files(case)[-1])
    assert pred.shape == lab.shape and np.allclose(pred.affine, lab.affine)
    assert pred.get_data_dtype() == np.uint8 and int(np.asarray(pred.dataobj).max()) <= 8
    pngs = sorted((ev / "overlays").glob("*.png"))
    assert len(pngs) == 3 and pngs[0].name.startswith("01_")
    # report: two evaluations side by side
    code, out, err = run_train(["report", ev, ev, "--names", "a,b", "--out", tmp_path / "t.md"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == header.replace("| Method |", "| Method | Prompt |")
    assert lines[2].startswith("| a | center | ") and lines[3].startswith("| b | center | ")
    assert "warning" not in err  # same test data twice: comparable
    assert (tmp_path / "t.md").read_text() == out


@pytest.mark.shared_data
def test_brats_source_and_packed_test_split_agree(tmp_path, capsys, brats_root):
    src = open_source("brats", brats_root)
    run = make_tiny_run(tmp_path / "tiny-brats", src)
    packed = pack_volumes(tmp_path / "packed", "brats", brats_root, "test")
    a, b = tmp_path / "a", tmp_path / "b"
    for extra, out in ((["--dataset", "brats", "--root", brats_root, "--split", "test"], a),
                       (["--shards", packed], b)):
        code, _, err = run_train(["eval", "--run", run, *extra, "--out", out, "--batch-size", "16",
                                     "--num-threads", "1"], capsys)
        assert code == 0, err
    assert cases(a) == cases(b)
    sa = summary(a)
    assert sa["n_volumes"] == 1 and sa["slices"] > 50
    assert summary(b)["mean_dsc"] == sa["mean_dsc"] and summary(b)["mean_hd95"] == sa["mean_hd95"]


def test_bad_inputs_give_one_line_errors(brain_run, tmp_path, capsys):
    def fails(args, *needles):
        code, _, err = run_train(args, capsys)
        assert code != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        for n in needles:
            assert n in err, err

    # a run directory without a checkpoint
    empty = tmp_path / "norun"
    empty.mkdir()
    (empty / "config.json").write_text((brain_run / "config.json").read_text())
    fails(["eval", "--run", empty, "--dataset", "demo-brain", "--out", tmp_path / "x"], "no checkpoint")
    # classes of the dataset differ from the run's
    fails(["eval", "--run", brain_run, "--dataset", "demo-abdomen", "--out", tmp_path / "x"],
          "do not match", "tumour", "spleen")
    # both or neither model / data
    fails(["eval", "--dataset", "demo-brain", "--out", tmp_path / "x"], "--run")
    fails(["eval", "--run", brain_run, "--out", tmp_path / "x"], "--shards")
    # not a packed-volumes directory
    fails(["eval", "--run", brain_run, "--shards", tmp_path, "--out", tmp_path / "x"], "dataset.json")
    # an existing non-empty output directory is not overwritten
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    fails(["eval", "--run", brain_run, "--dataset", "demo-brain", "--out", tmp_path / "keep"], "not empty")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"
    fails(["report", tmp_path / "keep"], "summary.json")


def test_volumes_without_foreground_are_skipped(brain_run, tmp_path, capsys):
    from train.evaluate import EvalOptions, evaluate
    from train.inference import load_run_model
    from train.testsets import EvalVolume, TestSet

    src = open_source("demo-brain")
    vol = src.load(src.case_ids()[0])
    empty = EvalVolume("blank", vol.image, np.zeros_like(vol.label), vol.spacing, vol.affine)
    full = EvalVolume(vol.volume_id, vol.image, vol.label, vol.spacing, vol.affine)
    volumes = {"blank": empty, vol.volume_id: full}
    messages = []
    ts = TestSet({"kind": "test"}, src.class_names, src.task, list(volumes), volumes.__getitem__)
    result = evaluate(load_run_model(brain_run), ts, tmp_path / "ev", EvalOptions(), log=messages.append)
    assert result["n_volumes"] == 1 and result["skipped_volumes"] == ["blank"]
    assert any("blank" in m and "skipped" in m for m in messages)
    from shared.errors import DataError

    only_blank = TestSet({"kind": "test"}, src.class_names, src.task, ["blank"], volumes.__getitem__)
    with pytest.raises(DataError, match="no volume with foreground"):
        evaluate(load_run_model(brain_run), only_blank, tmp_path / "ev2", EvalOptions(), log=messages.append)
    assert not (tmp_path / "ev2").exists()


def test_combine_class_logits_highest_wins():
    from train.inference import combine_class_logits

    logits = np.array([[[1.0, -1.0, 3.0]], [[2.0, -0.5, -1.0]]], np.float32)
    pred = combine_class_logits([2, 5], logits, (1, 3))
    assert pred.tolist() == [[5, 0, 2]]
    assert combine_class_logits([], np.zeros((0, 1, 3), np.float32), (1, 3)).tolist() == [[0, 0, 0]]


def test_zero_shot_takes_classes_from_the_dataset(tmp_path, capsys):
    ev = tmp_path / "zs"
    code, out, err = run_train(["eval", "--model", "tiny", "--img-size", "64", "--dataset", "demo-abdomen",
                                "--split", "test", "--out", ev, "--num-threads", "1"], capsys)
    assert code == 0, err
    s = summary(ev)
    assert s["model"]["zero_shot"] is True and s["run"] is None and s["method"] == "SAM (tiny, zero-shot)"
    assert list(s["per_class"]) == list(open_source("demo-abdomen").class_names[1:])
    assert "| SAM (tiny, zero-shot) |" in out
    code, _, err = run_train(["eval", "--model", "vit_b", "--dataset", "demo-brain", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "--checkpoint" in err and len(err.strip().splitlines()) == 1


def test_source_options_with_shards_are_refused(tmp_path):
    """--split/--root/--modality/--config only mean something with --dataset; with --shards they are an error."""
    import subprocess
    import sys
    from pathlib import Path

    train = Path(sys.executable).with_name("train")
    shards = tmp_path / "test"
    shards.mkdir()
    result = subprocess.run([str(train), "eval", "--model", "tiny", "--shards", str(shards), "--split", "all",
                             "--out", str(tmp_path / "e")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--split only apply with --dataset" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_box_prompts_for_a_tiny_run(brain_run, tmp_path, capsys):
    """--prompt box: one box per slice and class (the class's box + --box-margin), recorded in
    summary.json and drawn on the overlays; a wider margin gives other predictions."""
    from train.evaluate import slice_prompts

    label = np.zeros((40, 50), np.uint8)
    label[10:20, 5:15] = 1
    label[30:35, 40:48] = 2
    prompts = slice_prompts(label, 2, "box", 0, 0, 0, box_margin=3)
    assert prompts[1].box == (2, 7, 17, 22) and prompts[2].box == (37, 27, 49, 37)
    outs = []
    for name, margin in (("b5", 5), ("b0", 0)):
        code, _, err = run_train(["eval", "--run", brain_run, "--dataset", "demo-brain", "--split", "test",
                                  "--prompt", "box", "--box-margin", margin, "--out", tmp_path / name,
                                  "--overlays", "--overlay-count", "2", "--num-threads", "1", "--no-progress"],
                                 capsys)
        assert code == 0, err
        s = summary(tmp_path / name)
        assert s["prompt"] == "box" and s["box_margin"] == margin
        outs.append(cases(tmp_path / name))
    assert outs[0] != outs[1]
    assert len(list((tmp_path / "b5" / "overlays").glob("*.png"))) == 2
