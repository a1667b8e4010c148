"""`train pretrain` (automatic masks -> pretrained tiny SAM), LoRA fine-tuning from its model.pt,
zero-shot evaluation, and the one-line errors for checkpoints of another model size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evalkit import run_train
from train_datasets import make_dataset

PRETRAIN = ["pretrain", "--dataset", "demo", "--max-cases", "1", "--slice-stride", "6",
            "--batch-size", "4", "--num-threads", "1", "--seed", "5", "--no-progress"]


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """A 4-step pretraining on one demo case (seconds); its directory."""
    out = tmp_path_factory.mktemp("pre") / "pre"
    from shared.cli_support import run_cli
    from train.cli import cli

    try:
        run_cli(cli, PRETRAIN + ["--steps", "4", "--out", str(out)])
    except SystemExit as exc:
        assert not exc.code, exc.code
    return out


def test_automatic_masks_are_regions_of_the_content():
    from train.automasks import AutoMaskConfig, partition, slice_partitions

    cfg = AutoMaskConfig()
    yy, xx = np.mgrid[:64, :64]
    image = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26 ** 2, 0.4, 0.0).astype(np.float32)
    image[(yy - 28) ** 2 + (xx - 36) ** 2 < 8 ** 2] = 0.9          # a bright "lesion"
    parts = dict(slice_partitions(image, cfg))
    assert set(parts) == set(cfg.partitions)
    for name, regions in parts.items():
        assert regions.dtype == np.uint8 and regions.shape == image.shape
        assert not regions[image == 0].any(), name                  # never outside the scan
        sizes = np.bincount(regions.ravel())[1:]
        assert (sizes[sizes > 0] >= cfg.min_region).all(), name
    lesion = (yy - 28) ** 2 + (xx - 36) ** 2 < 8 ** 2
    bands = partition(image, "levels:3", cfg)
    # the lesion is (up to the blur at its rim) one region of the intensity bands
    ids, counts = np.unique(bands[lesion], return_counts=True)
    assert counts.max() >= 0.8 * lesion.sum()
    assert slice_partitions(np.zeros((64, 64), np.float32), cfg) == []


def test_pretrain_writes_model_config_metrics_preview(pre):
    from train.model import build_sam, guess_model

    state = torch.load(pre / "model.pt", weights_only=True)
    assert guess_model(state) == "tiny"
    assert set(state) == set(build_sam("tiny", None).sam.state_dict())      # a full state dict
    cfg = json.loads((pre / "config.json").read_text())
    p = cfg["pretrain"]
    assert p["split"] == "train" and p["seed"] == 5 and p["slice_stride"] == 6
    (src,) = p["sources"]
    assert src["source"]["name"] == "demo-brain" and len(src["cases"]) == 1
    case = next(iter(src["cases"].values()))
    assert case["used_slices"] >= 1 and case["slices"] >= case["used_slices"]
    assert p["num_samples"] == json.loads((pre / "automasks" / "dataset.json").read_text())["num_samples"]
    steps = [json.loads(line)["step"] for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    import cv2

    preview = cv2.imread(str(pre / "preview.png"))
    assert preview is not None and preview.shape[1] == 3 * 2 * 128


def test_pretrain_resume_reuses_masks_and_refuses_clobbering(pre, capsys):
    code, out, err = run_train(PRETRAIN + ["--steps", "4", "--out", pre], capsys)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_train(PRETRAIN + ["--steps", "6", "--resume", "--out", pre], capsys)
    assert code == 0, err
    assert "reusing" in out and "resuming at step 4" in out
    steps = [json.loads(line)["step"] for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
    code, out, err = run_train(["pretrain", "--dataset", "brats", "--out", pre / "x"], capsys)
    assert code == 2 and "--root" in err


def test_fit_from_pretrained_trains_lora_only(pre, tmp_path, capsys):
    from train.checkpointing import load_trained_model

    shards = make_dataset(tmp_path / "ds", n=12, size=(40, 36))
    run = tmp_path / "run"
    code, out, err = run_train(["fit", "--shards", shards, "--model", "tiny", "--checkpoint", pre / "model.pt",
                                "--steps", "3", "--batch-size", "4", "--num-threads", "1", "--no-progress",
                                "--out", run], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["lora"]["rank"] == 4 and cfg["train"]["trainable"] == "samed_lora"   # as for vit_*
    assert cfg["model"]["trainable_params"] < cfg["model"]["total_params"] / 5
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert any("lora_A" in k for k in saved)
    assert "image_encoder.patch_embed.proj.weight" not in saved        # frozen, comes from model.pt
    # The frozen base weights are the pretrained ones; the LoRA path is live after training.
    model, _ = load_trained_model(run)
    base = torch.load(pre / "model.pt", weights_only=True)
    now = model.sam.state_dict()
    assert torch.equal(now["image_encoder.patch_embed.proj.weight"], base["image_encoder.patch_embed.proj.weight"])
    assert torch.equal(now["image_encoder.blocks.0.attn.qkv.weight"], base["image_encoder.blocks.0.attn.qkv.weight"])
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)

    full = tmp_path / "full"
    code, out, err = run_train(["fit", "--shards", shards, "--model", "tiny", "--checkpoint", pre / "model.pt",
                                "--trainable", "full", "--steps", "2", "--batch-size", "4", "--num-threads", "1",
                                "--no-progress", "--out", full], capsys)
    assert code == 0, err
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["model"]["trainable_params"] == cfg["model"]["total_params"] and cfg["model"]["lora"] is None


def test_zero_shot_eval_of_pretrained_model(pre, tmp_path, capsys):
    code, out, err = run_train(["eval", "--model", "tiny", "--checkpoint", pre / "model.pt", "--dataset", "demo",
                                "--split", "test", "--max-volumes", "1", "--num-threads", "1",
                                "--out", tmp_path / "ev"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_volumes"] == 1
    assert "zero-shot" in out


def test_checkpoint_of_another_model_size_is_one_line_error(pre, tmp_path, capsys):
    shards = make_dataset(tmp_path / "ds", n=8)
    code, out, err = run_train(["fit", "--shards", shards, "--model", "vit_b", "--checkpoint", pre / "model.pt",
                                "--steps", "1", "--out", tmp_path / "r1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is a tiny checkpoint, not vit_b; use --model tiny" in err
    # A vit_b-shaped state dict (encoder width 768, 12 blocks) given to --model tiny, cheaply faked.
    fake = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 2, 2, 768),
                "image_encoder.blocks.11.norm1.weight": torch.zeros(768)}, fake)
    for args in (["fit", "--shards", shards, "--steps", "1", "--out", tmp_path / "r2"],
                 ["eval", "--dataset", "demo", "--split", "test", "--out", tmp_path / "ev"]):
        code, out, err = run_train(args + ["--model", "tiny", "--checkpoint", fake], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"checkpoint {fake} is a vit_b checkpoint, not tiny; use --model vit_b" in err


def test_run_records_its_base_weights_absolute_and_names_them_when_moved(pre, tmp_path, capsys, monkeypatch):
    """A relative --checkpoint is recorded as an absolute path (eval from another folder finds it),
    resume from that folder still matches, and base weights moved away give a one-line error that
    says how to point at them (--checkpoint), which then works."""
    import shutil

    shards = make_dataset(tmp_path / "ds", n=8, size=(40, 36))
    shutil.copy(pre / "model.pt", tmp_path / "base.pt")
    run = tmp_path / "run"
    fit = ["fit", "--shards", shards, "--model", "tiny", "--checkpoint", "base.pt", "--batch-size", "4",
           "--num-threads", "1", "--no-progress", "--out", run]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_train(fit + ["--steps", "2"], capsys)
    assert code == 0, err
    recorded = json.loads((run / "config.json").read_text())["train"]["checkpoint"]
    assert recorded == str(tmp_path / "base.pt")
    code, out, err = run_train(fit + ["--steps", "3", "--resume"], capsys)
    assert code == 0, err
    from shared.errors import DataError
    from train.checkpointing import load_trained_model

    monkeypatch.chdir(tmp_path / "ds")          # eval / predict load the run from elsewhere
    load_trained_model(run)
    (tmp_path / "base.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(DataError) as exc:
        load_trained_model(run)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "base.pt") in msg and "pass --checkpoint PATH" in msg
    load_trained_model(run, base_checkpoint=tmp_path / "moved.pt")
