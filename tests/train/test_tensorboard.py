"""`train fit --tensorboard` / `train eval --tensorboard`: the event files hold what metrics.jsonl
and summary.json hold (read back with TensorBoard's own EventAccumulator)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorboard", reason="the `tensorboard` extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from evalkit import make_tiny_run, pack_volumes, run_train  # noqa: E402
from shared.sources import open_source  # noqa: E402
from train_datasets import make_dataset  # noqa: E402

FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "4", "--num-workers", "0", "--threads", "1",
        "--no-progress"]


def _events(logdir) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_fit_and_eval_write_tensorboard_events(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", n=16, shard_size=8)
    run = tmp_path / "run"
    code, _, err = run_train(["fit", "--shards", ds, "--steps", "6", "--log-every", "2", "--out", run,
                              "--tensorboard", "--tensorboard-images-every", "3", *FAST], capsys)
    assert code == 0, err
    # resumed: events after the checkpoint are purged, the curve continues
    code, _, err = run_train(["fit", "--shards", ds, "--steps", "8", "--resume", "--out", run, "--tensorboard",
                              "--tensorboard-images-every", "3", "--no-progress"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ea = _events(run / "tensorboard")
    for key in ("loss", "ce", "dice", "lr", "samples_per_s", "epoch"):
        got = {e.step: e.value for e in ea.Scalars(f"train/{key}")}
        assert got == pytest.approx({r["step"]: r[key] for r in records}, rel=1e-6), key
    pictures = ea.Images("train/predictions")
    assert [p.step for p in pictures] == [3, 6, 8]
    assert (pictures[0].width, pictures[0].height) == (3 * 32, 4 * 32)   # image|target|prediction x 4 samples



def test_eval_adds_its_table_to_the_runs_tensorboard(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "tiny", open_source("demo-brain"))
    packed = pack_volumes(tmp_path / "packed", "demo-brain", None, "test")
    evaldir = tmp_path / "eval-test"
    code, _, err = run_train(["eval", "--run", run, "--shards", packed, "--out", evaldir, "--num-threads", "1",
                              "--tensorboard"], capsys)
    assert code == 0, err
    summary = json.loads((evaldir / "summary.json").read_text())
    ea = _events(run / "tensorboard")
    assert ea.Scalars("eval/eval-test/mean_dsc")[0].value == pytest.approx(summary["mean_dsc"])
    assert ea.Scalars("eval/eval-test/tumour/dsc")[0].value == pytest.approx(summary["per_class"]["tumour"]["dsc"])
    table = ea.Tensors("eval/eval-test/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table == (evaldir / "table.md").read_text()
