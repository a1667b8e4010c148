"""train.embeddings and `train fit --frozen-encoder`: embeddings computed once per sample, cached by
encoder and shard hash, and training on them equal to training on the images with a frozen encoder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.cli_support import run_cli
from train.checkpointing import load_checkpoint
from train.cli import cli
from train_datasets import make_dataset

FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--threads", "1",
        "--no-progress", "--steps", "3", "--prompt", "box"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("emb") / "ds", n=12, shard_size=5)


def _run(argv, capsys) -> tuple[int, str]:
    try:
        run_cli(cli, [str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_frozen_encoder_trains_the_decoder_on_cached_embeddings(ds, tmp_path, capsys):
    cache = tmp_path / "cache"
    frozen, plain, again = tmp_path / "frozen", tmp_path / "plain", tmp_path / "again"
    code, out = _run(["fit", "--shards", ds, "--out", frozen, "--frozen-encoder", "--embedding-cache", cache,
                      *FAST], capsys)
    assert code == 0, out
    assert "frozen encoder: encoding 12 samples of 3 shard(s)" in out and "trainable set decoder_lora" in out
    info = json.loads((frozen / "config.json").read_text())
    assert info["train"]["frozen_encoder"] is True and info["train"]["trainable"] == "decoder_lora"
    assert info["embeddings"]["computed_now"] == 12 and info["embeddings"]["dtype"] == "float16"
    shard_hashes = [s["sha256"] for s in json.loads((ds / "dataset.json").read_text())["shards"]]
    files = sorted(Path(info["embeddings"]["folder"]).glob("*.npy"))
    assert sorted(f.stem for f in files) == sorted(shard_hashes)
    emb = np.load(files[0], mmap_mode="r")
    assert emb.dtype == np.float16 and emb.shape[1:] == (64, 4, 4)    # tiny at 32 px: 4 x 4 grid

    # the same weights trained from the images, encoder frozen: the same losses (fp16 rounding)
    code, out = _run(["fit", "--shards", ds, "--out", plain, "--trainable", "decoder_lora", *FAST], capsys)
    assert code == 0, out
    assert np.allclose(_losses(frozen), _losses(plain), atol=2e-3)
    # only decoder-side tensors were trained, the encoder is the base one
    saved = load_checkpoint(frozen / "checkpoints" / "last.pt")["trainable"]
    assert saved and not any(k.startswith("image_encoder.") for k in saved)

    # a second run finds every shard in the cache
    code, out = _run(["fit", "--shards", ds, "--out", again, "--frozen-encoder", "--embedding-cache", cache,
                      *FAST], capsys)
    assert code == 0, out
    assert "encoding" not in out
    assert json.loads((again / "config.json").read_text())["embeddings"]["computed_now"] == 0
    assert _losses(again) == _losses(frozen)


def test_frozen_encoder_refusals_and_damaged_cache(ds, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out = _run(["fit", "--shards", ds, "--out", tmp_path / "a", "--frozen-encoder", "--trainable",
                      "samed_lora", *FAST], capsys)
    assert code == 2 and "adapts the image encoder" in out and len(out.strip().splitlines()) == 1
    argv = [a if a != "box" else "none" for a in FAST]
    code, out = _run(["fit", "--shards", ds, "--out", tmp_path / "b", "--frozen-encoder", *argv], capsys)
    assert code == 2 and "prompted training" in out
    code, out = _run(["fit", "--shards", ds, "--out", tmp_path / "c", "--frozen-encoder", "--embedding-cache",
                      cache, *FAST], capsys)
    assert code == 0, out
    victim = next(cache.rglob("*.npy"))
    victim.write_bytes(b"not an array")
    code, out = _run(["fit", "--shards", ds, "--out", tmp_path / "d", "--frozen-encoder", "--embedding-cache",
                      cache, *FAST], capsys)
    assert code == 2 and str(victim) in out and "delete it to recompute" in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_eval_embedding_cache_reuses_test_slices(tmp_path, capsys):
    """train eval --embedding-cache: the second evaluation on the same encoder finds every slice's
    embedding and gives the same scores."""
    import csv

    from train.embeddings import CachingEncoder

    cache = tmp_path / "slices"
    rows = []
    for name in ("a", "b"):
        code, out = _run(["eval", "--model", "tiny", "--img-size", "32", "--dataset", "demo-brain", "--split", "test",
                          "--embedding-cache", cache, "--out", tmp_path / name, "--num-threads", "1",
                          "--no-progress"], capsys)
        assert code == 0, out
        with open(tmp_path / name / "cases.csv", newline="") as f:
            rows.append(list(csv.DictReader(f)))
    assert rows[0] == rows[1]
    files = list(cache.rglob("*.npy"))
    assert files and all(np.load(f).dtype == np.float32 for f in files[:3])
    calls = []

    def encode(x):
        calls.append(len(x))
        return torch.zeros(len(x), 2, 1, 1)

    enc = CachingEncoder(encode, tmp_path / "c2", "k" * 64)
    x = torch.rand(3, 3, 8, 8)
    enc(x)
    enc(torch.cat([x[:1], torch.rand(1, 3, 8, 8)]))
    assert calls == [3, 1] and (enc.hits, enc.misses) == (1, 4)
