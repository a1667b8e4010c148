"""bench/gpu_check.py in its tiny mode: the GPU check's three parts (training through the real
loader, evaluation, a one-process torchrun DDP run) run end to end on whatever device is here."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from evalkit import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_tiny_mode(tmp_path, capsys):
    if str(PROJECT_ROOT) not in sys.path:   # bench/ is scripts, not an installed package
        sys.path.insert(0, str(PROJECT_ROOT))
    from bench import gpu_check

    result = gpu_check.main(["--tiny", "--work", str(tmp_path)])
    saved = json.loads((tmp_path / "tiny" / str(gpu_check.TINY.samples) / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(result))
    train = result["train"]
    assert train["model"] == "tiny" and train["timed_steps"] == gpu_check.TINY.timed_steps
    assert train["samples_per_s"] > 0 and train["step_ms"] > 0
    assert math.isfinite(train["first_loss"]) and math.isfinite(train["final_loss"])   # neither NaN nor inf
    assert result["eval"]["slices"] > 0 and result["eval"]["slices_per_s"] > 0
    ddp = result["torchrun"]
    assert ddp["backend"] == ("nccl" if torch.cuda.is_available() else "gloo") and ddp["steps"] == 2
    out = capsys.readouterr().out
    assert "| tiny (full training) | 64 | 4 |" in out and "DDP" in out
