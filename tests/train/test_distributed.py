"""Two CPU processes under torchrun (gloo): disjoint samples per step, identical final weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from shared import open_dataset
from train.data import SampleOrder
from train_datasets import make_dataset
from waitkit import HANG

pytestmark = pytest.mark.slow


def test_ddp_two_ranks_gloo(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=16, shard_size=4)
    run = tmp_path / "run"
    steps, batch, world = 5, 2, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
           "-m", "train", "fit", "--shards", str(ds), "--out", str(run), "--model", "tiny",
           "--img-size", "32", "--steps", str(steps), "--batch-size", str(batch), "--num-workers", "0",
           "--threads", "1", "--log-every", "1", "--log-sample-ids", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG)  # only a hang
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("done: steps 0->5") == 1

    per_rank = {}
    for rank in range(world):
        lines = (run / "debug" / f"samples-rank{rank}.jsonl").read_text().splitlines()
        per_rank[rank] = [json.loads(line) for line in lines]
        assert [r["step"] for r in per_rank[rank]] == list(range(1, steps + 1))
    # Ranks saw disjoint samples within each step; the union is the global batch of a one-process
    # run at batch * world: stream positions [g * 4, g * 4 + 4).
    d = open_dataset(ds)
    order = SampleOrder([d.shard_range(k) for k in range(d.num_shards)], seed=json.loads(
        (run / "config.json").read_text())["train"]["seed"], block_shards=2)
    for g in range(steps):
        a, b = per_rank[0][g], per_rank[1][g]
        assert not set(a["ids"]) & set(b["ids"]) and len(a["ids"]) == len(b["ids"]) == batch
        _, samples = order.samples_at(list(range(g * batch * world, (g + 1) * batch * world)))
        assert sorted(a["ids"] + b["ids"]) == sorted(d.ids[i] for i in samples)
    first_epoch = [i for g in range(4) for r in range(world) for i in per_rank[r][g]["ids"]]
    assert Counter(first_epoch) == Counter(d.ids)          # 4 steps x 4 = one epoch, each once
    digests = {json.loads((run / "debug" / f"weights-rank{r}.json").read_text())["sha256"] for r in range(world)}
    assert len(digests) == 1
    assert json.loads((run / "config.json").read_text())["global_batch_size"] == 4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == steps
