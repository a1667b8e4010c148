"""Evaluation throughput (slices/s) of `train eval` with the tiny model on CPU.

Evaluates the tiny SAM (128 px input, center prompts, batch 8) on the real BraTS sample's test
split (or a demo phantom) through the same code as `train eval`, and reports slices/s: slices
run through the encoder (every slice holding ground truth) per second of prediction time
(encode + prompts + decode + upsampling; volume loading and metrics excluded), plus the total
wall time including loading and DSC/HD95. The model is untrained (throughput does not depend
on the weights): `--run RUNDIR` evaluates a trained run instead.

Usage:  python bench/bench_eval.py [--dataset brats --root ../shared/data/brats2018_sample]
            [--split test] [--threads 2] [--batch-size 8] [--repeat 2] [--append]
``--append`` adds a section to BENCHMARKS.md (re-read just before writing) with date and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="brats")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "brats2018_sample"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", default=None, help="evaluate this run instead of an untrained tiny model")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="center")
    ap.add_argument("--repeat", type=int, default=2, help="runs; the best is reported")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()

    import torch

    from train.evaluate import EvalOptions, evaluate, load_run_model, load_zero_shot, open_source_testset

    torch.set_num_threads(args.threads)
    root = None if args.dataset.startswith("demo") else args.root
    testset = open_source_testset(args.dataset, root, args.split)
    if args.run:
        loaded = load_run_model(args.run)
    else:
        loaded = load_zero_shot("tiny", None, args.img_size)
    results = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = evaluate(loaded, testset, Path(tmp) / "ev",
                           EvalOptions(prompt=args.prompt, batch_size=args.batch_size, num_threads=args.threads),
                           log=lambda m: None)
            res["wall"] = time.perf_counter() - t0
        results.append(res)
        print(f"run {r + 1}: {res['slices']} slices, {res['slices_per_s']:.1f} slices/s (prediction), "
              f"{res['wall']:.1f} s wall incl. loading and metrics", file=sys.stderr)
    best = max(results, key=lambda x: x["slices_per_s"])
    desc = f"{args.dataset} {args.split} split ({best['n_volumes']} volume(s), {best['slices']} slices with ground truth)"
    lines = [
        f"## train eval throughput, tiny model on CPU ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Shared with other jobs: numbers are indicative.",
        f"Command: `python bench/bench_eval.py --dataset {args.dataset} --split {args.split} "
        f"--threads {args.threads} --batch-size {args.batch_size} --repeat {args.repeat}` "
        f"({'run ' + args.run if args.run else 'untrained tiny SAM'}, {args.img_size} px input, "
        f"{args.prompt} prompts, best of {args.repeat}).",
        "",
        "| data | slices | prediction slices/s | wall s (incl. loading, DSC/HD95) | DSC (%) |",
        "|:---|---:|---:|---:|---:|",
        f"| {desc} | {best['slices']} | {best['slices_per_s']:.1f} | {best['wall']:.1f} | "
        f"{100 * best['mean_dsc']:.2f} |",
        "",
        "Prediction time = resize + encoder (once per slice, batched) + one decoder call per (slice, class) "
        "prompt + upsampling; a volume's slices without ground truth are not run (prompted protocol).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        path = ROOT / "BENCHMARKS.md"
        current = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(current.rstrip("\n") + "\n\n" + text)
        print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
