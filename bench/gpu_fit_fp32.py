"""`train fit` on a GPU computing in float32, as the CPU does: bf16 autocast and TF32 off.

`train fit` trains under bf16 autocast on CUDA (fast, and what a real vit_b run wants). A grid
that mixes CPU and GPU fits of the tiny model must not mix precisions, so this wrapper turns
autocast into a no-op and TF32 off, then runs the unchanged `train fit` command line:

    python bench/gpu_fit_fp32.py fit --shards DS --model tiny ... --out RUN

Used for the exemplars-only arms of the cohort grid (docs/results.md); the numbers still differ
from a CPU run of the same seed in the last bits (other kernels, other summation order).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def _no_autocast(*args, **kwargs):
    return contextlib.nullcontext()


def main() -> int:
    torch.autocast = _no_autocast  # train.fit_steps.autocast_for and train.inference look it up at call time
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    from train.cli import main as train_main
    return train_main()


if __name__ == "__main__":
    sys.exit(main())
