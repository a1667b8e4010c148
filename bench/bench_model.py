"""Model speed on CPU: the tiny SAM's training step and per-slice inference.

Times, with ``torch.set_num_threads(--threads)`` (default 2, the project machine):

* train step: forward + CE/Dice loss + backward + AdamW step at batch ``--batch-size`` (8),
  ``--img-size`` (128), one random point per sample, full training (tiny's default);
* eval per slice: encode one slice and decode one point prompt, no grad (what `train eval` does
  per slice and class), at batch 1 and as a batch of 8 slices (time per slice);
* optionally (``--vit-b``) the same eval forward for a randomly initialised vit_b at 512 with
  LoRA, to size CPU evaluation of real checkpoints.

Timings: median and minimum wall time and median process CPU time over ``--steps`` repetitions
after 2 warm-up steps, for each ``--threads`` count (default 1 and 2). Other processes may share
the CPU: the load average is printed, the minimum is the least disturbed run, and on a loaded
machine one thread is often faster than two.

Usage:  python bench/bench_model.py [--threads 1,2] [--steps 20] [--vit-b] [--append]
``--append`` adds the table to BENCHMARKS.md (re-read just before writing, so sections other
tools add meanwhile are kept).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model  # noqa: E402


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"

from train.losses import ce_dice_loss  # noqa: E402
from train.model import PromptSAM, add_lora, build_sam, count_parameters  # noqa: E402


class Timing(tuple):
    """(median wall, min wall, median process CPU time) in seconds."""


def _timed(fn, steps: int) -> Timing:
    for _ in range(2):
        fn()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing((statistics.median(wall), min(wall), statistics.median(cpu)))


def _per(t: Timing, n: int) -> Timing:
    return Timing(tuple(v / n for v in t))


def _inputs(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, size, size, generator=g)
    points = torch.randint(0, size, (batch, 1, 2), generator=g).float()
    labels = torch.ones(batch, 1, dtype=torch.long)
    target = (torch.rand(batch, size, size, generator=g) > 0.7).float()
    return images, points, labels, target


def bench_train_step(model: PromptSAM, batch: int, size: int, steps: int) -> Timing:
    images, points, labels, target = _inputs(batch, size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    model.train()

    def step():
        loss, _, _ = ce_dice_loss(model(images, points, labels), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _timed(step, steps)


def bench_eval(model: PromptSAM, batch: int, size: int, steps: int) -> Timing:
    images, points, labels, _ = _inputs(batch, size, seed=1)
    model.eval()

    def fwd():
        with torch.inference_mode():
            model(images, points, labels)
    return _per(_timed(fwd, steps), batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--vit-b", action="store_true", help="also time vit_b (random init) eval at 512")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args(argv)
    threads = [int(t) for t in str(args.threads).split(",")]
    load_before = os.getloadavg()[0]

    rows = []
    tiny = PromptSAM(build_sam("tiny", None, args.img_size))
    n = count_parameters(tiny).total
    vit = None
    if args.vit_b:
        sam = build_sam("vit_b", None, 512, allow_random=True)
        add_lora(sam, rank=4)
        vit = PromptSAM(sam)
    for th in threads:
        torch.set_num_threads(th)
        t = bench_train_step(tiny, args.batch_size, args.img_size, args.steps)
        rows.append((f"tiny ({n / 1e6:.2f}M, full training)", f"train step, batch {args.batch_size}",
                     args.img_size, th, t))
        for b in (1, args.batch_size):
            rows.append(("tiny", f"eval forward per slice, batch {b}", args.img_size, th,
                         bench_eval(tiny, b, args.img_size, args.steps)))
        if vit is not None:
            rows.append(("vit_b + LoRA r4 (random init)", "eval forward per slice, batch 1", 512, th,
                         bench_eval(vit, 1, 512, max(3, args.steps // 5))))
    load_after = os.getloadavg()[0]

    header = ("| model | what | img | threads | ms median | ms min | CPU ms median | samples/s (median) |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {m} | {w} | {s} | {th} | {1e3 * t[0]:.1f} | {1e3 * t[1]:.1f} | "
                        f"{1e3 * t[2]:.1f} | {(args.batch_size if 'train' in w else 1) / t[0]:.1f} |"
                        for m, w, s, th, t in rows]
    table = "\n".join(lines)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (f"{when}; {machine()}; median/min of {args.steps} after "
            f"2 warm-up; load average {load_before:.1f} before / {load_after:.1f} after "
            "(other processes share the CPU)")
    print(table)
    print(note)
    if args.append:
        path = ROOT / "BENCHMARKS.md"
        section = f"\n## Model speed (bench/bench_model.py)\n\n{note}\n\n{table}\n"
        # Append only (open in 'a' mode) so sections written meanwhile by other tools survive.
        if not path.exists():
            with path.open("x") as f:
                f.write("# Benchmarks\n")
        with path.open("a") as f:
            f.write(section)
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
