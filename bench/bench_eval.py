"""Evaluation throughput (slices/s) of `train eval` with the tiny model on CPU.

Evaluates the tiny SAM (128 px input, center prompts, batch 8) on the real BraTS sample's test
split and the Synapse sample (8 organs) through the same code as `train eval`, and reports slices/s: slices
run through the encoder (every slice holding ground truth) per second of prediction time
(encode + prompts + decode + upsampling; volume loading and metrics excluded), plus the total
wall time including loading and DSC/HD95. The model is untrained (throughput does not depend
on the weights): `--run RUNDIR` evaluates a trained run instead.

Usage:  python bench/bench_eval.py [--datasets brats,synapse] [--threads 1,2] [--batch-size 8]
            [--repeat 2] [--run RUNDIR] [--append]
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

from bench.machine_info import cpu_model  # noqa: E402


def machine() -> str:
    import torch

    return f"{cpu_model()}, {os.cpu_count()} cores visible, torch {torch.__version__}, Python {platform.python_version()}"


DEFAULT_ROOTS = {"brats": ROOT.parent / "shared" / "data" / "brats2018_sample",
                 "synapse": ROOT.parent / "shared" / "data" / "synapse_sample"}
DEFAULT_SPLITS = {"brats": "test", "synapse": "all"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="brats,synapse",
                    help="comma list of sources: brats (sample test split), synapse (sample, all), demo-brain, ...")
    ap.add_argument("--run", default=None, help="evaluate this run instead of an untrained tiny model")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    ap.add_argument("--prompt", default="center")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best is reported")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()

    from train.evaluate import EvalOptions, evaluate
    from train.inference import load_run_model, load_zero_shot
    from train.testsets import open_source_testset

    loaded = load_run_model(args.run) if args.run else load_zero_shot("tiny", None, args.img_size)
    rows = []
    for name in args.datasets.split(","):
        root = DEFAULT_ROOTS.get(name)
        split = DEFAULT_SPLITS.get(name, "test")
        testset = open_source_testset(name, root, split)
        for threads in (int(t) for t in args.threads.split(",")):
            results = []
            for r in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    res = evaluate(loaded, testset, Path(tmp) / "ev",
                                   EvalOptions(prompt=args.prompt, batch_size=args.batch_size, num_threads=threads),
                                   log=lambda m: None)
                    res["wall"] = time.perf_counter() - t0
                results.append(res)
                print(f"{name} threads {threads} run {r + 1}: {res['slices']} slices, "
                      f"{res['slices_per_s']:.1f} slices/s (prediction), {res['wall']:.1f} s wall", file=sys.stderr)
            best = max(results, key=lambda x: x["slices_per_s"])
            rows.append(f"| {name} {split} ({best['n_volumes']} vol, {len(testset.class_names) - 1} class(es)) | "
                        f"{threads} | {best['slices']} | {best['slices_per_s']:.1f} | {best['wall']:.1f} |")
    lines = [
        f"## train eval throughput, tiny model on CPU ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine()}. The machine was shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f}): numbers are indicative.",
        f"Command: `python bench/bench_eval.py --datasets {args.datasets} --threads {args.threads} "
        f"--batch-size {args.batch_size} --repeat {args.repeat}` "
        f"({'run ' + args.run if args.run else 'untrained tiny SAM'}, {args.img_size} px input, "
        f"{args.prompt} prompts, best of {args.repeat}; real sample data).",
        "",
        "| data | torch threads | slices | prediction slices/s | wall s (incl. loading, DSC/HD95) |",
        "|:---|---:|---:|---:|---:|",
        *rows,
        "",
        "Prediction time = resize + encoder (once per slice, batched by 8) + decoder calls for every "
        "(slice, class) prompt + upsampling; slices without ground truth are not run (prompted protocol).",
        "With other jobs on the 2 cores, 2 torch threads are often several times slower than 1 "
        "(OpenMP threads wait for each other): use `train eval --num-threads 1` on a busy machine.",
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
