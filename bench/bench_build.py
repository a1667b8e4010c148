"""Build throughput: `synth build` (shards) vs two straightforward scipy + one-npz-per-sample versions.

For each preset, on the real sample data:

* ``brats``: BraTS 2018 sample (4 cases, FLAIR, whole tumour), ``--split all --exemplars 150``,
  4500 samples (the paper's size);
* ``synapse``: Synapse sample (1 CT), ``--split all --exemplars 1``, 1800 samples;

it runs, side by side in one go:

1. ``synth build`` end to end in a fresh process with ``--workers`` = all CPUs (wall time includes
   interpreter start, imports, reading and scanning the volumes, synthesis, float16 conversion,
   hashing, Zarr writing and the manifests);
2. the shard phase of the same build (bank already in memory) in this process, on 1 worker and on
   ``--workers`` workers;
3. ``bench/naive_synthesis.build_naive``, both variants, one process, bank in memory, on
   ``--naive-samples`` samples (they are slow; the rate is per sample, so a subset is timed and
   its samples/s stands for the whole set, said so in the table):
   ``chained`` (one whole-frame ndimage call per transform: shift, flip, zoom, rotate, shift,
   gaussian_filter; spline order 3 for images, 0 for labels -- the straightforward version) and
   ``single-affine`` (one ``affine_transform`` per object, order 1 -- an already optimised scipy
   version); each writes one ``np.savez_compressed`` file per sample.

"build s" is the phase after the bank is in memory, "wall s" the whole command, "CPU s" user +
system CPU time of all processes and threads (less sensitive than wall time to other work on a
shared machine; "samples/CPU-s" compares implementations independently of the load). The load
average (1 min) at the start of each row is in the last column.

Usage:  python bench/bench_build.py [--presets brats,synapse] [--naive-samples 300] [--append]
``--append`` adds the table to BENCHMARKS.md with the date and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, ncpu  # noqa: E402

PRESETS = {
    "brats": {"dataset": "brats", "root": "brats2018_sample", "exemplars": "150", "num_samples": 4500},
    "synapse": {"dataset": "synapse", "root": "synapse_sample", "exemplars": "1", "num_samples": 1800},
}
SUMMARY = re.compile(r"built (\d+) samples in ([\d.]+) s, (\d+) samples/s, ([\d.]+) MB written")


def data_root() -> Path:
    return Path(os.environ.get("EXEMPLAR_SAM_DATA", ROOT.parent / "shared" / "data")).resolve()


def run_ours(preset: dict, out: Path, workers: int, fmt: str) -> dict:
    """`synth build` end to end in a fresh process (wall and CPU of the process and its workers)."""
    import resource

    cmd = [sys.executable, "-m", "synth", "build", "--dataset", preset["dataset"],
           "--root", str(data_root() / preset["root"]), "--split", "all", "--exemplars", preset["exemplars"],
           "--num-samples", str(preset["num_samples"]), "--workers", str(workers), "--format", fmt,
           "--no-progress", "--out", str(out)]
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "load": load}
    m = SUMMARY.search(proc.stdout)
    n, build_s, mb = int(m.group(1)), float(m.group(2)), float(m.group(4))
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"samples": n, "wall": wall, "build": build_s, "rate": n / build_s, "mb": mb, "mbps": mb / build_s,
            "cpu": cpu, "load": load}


def prepare(preset: dict, out: Path):
    import cv2

    from synth.building.spec import BuildConfig
    from synth.building.jobs import prepare_exemplar_job

    cv2.setNumThreads(1)
    cfg = BuildConfig(kind="synthesized", dataset=preset["dataset"], root=str(data_root() / preset["root"]),
                      split="all", exemplars=preset["exemplars"], num_samples=preset["num_samples"])
    return prepare_exemplar_job(cfg, out, workers=ncpu(), progress=False)


def run_ours_shards(job, workers: int) -> dict:
    """The shard phase of `synth build` on ``workers`` processes, from this process (bank loaded;
    forked workers share it). CPU = this process + its finished children."""
    import resource

    from synth.building.run import run_job

    shutil.rmtree(job.out, ignore_errors=True)
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, t0 = time.process_time(), time.perf_counter()
    summary = run_job(job, workers=workers, progress=False, log=lambda m: None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # process_time includes threads
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    mb = summary.bytes_written / 1e6
    shutil.rmtree(job.out, ignore_errors=True)
    return {"samples": summary.built, "wall": None, "build": wall, "rate": summary.built / wall, "mb": mb,
            "mbps": mb / wall, "cpu": cpu, "load": load}


def run_naive(job, out: Path, n: int, variant: str) -> dict:
    from bench.naive_synthesis import build_naive

    producer = job.producer
    load = os.getloadavg()[0]
    c0 = time.process_time()
    stats = build_naive(producer.bank, producer.config, producer.task, n=n, seed=0, out_dir=out / variant,
                        variant=variant)
    cpu = time.process_time() - c0
    shutil.rmtree(out / variant, ignore_errors=True)
    mb = stats["bytes"] / 1e6
    return {"samples": stats["samples"], "wall": None, "build": stats["seconds"], "rate": stats["samples_per_s"],
            "mb": mb, "mbps": mb / stats["seconds"], "cpu": cpu, "load": load}


def fmt_row(preset: str, method: str, workers: int, r: dict) -> str:
    if "error" in r:
        return f"| {preset} | {method} | {workers} | failed: {r['error'][:160]} | | | | | | | | |"
    wall = f"{r['wall']:.2f}" if r.get("wall") is not None else "-"
    return (f"| {preset} | {method} | {workers} | {r['samples']} | {wall} | {r['build']:.2f} | {r['rate']:.0f} | "
            f"{r['cpu']:.2f} | {r['samples'] / r['cpu']:.0f} | {r['mb']:.1f} | {r['mbps']:.1f} | {r['load']:.1f} |")


NAIVE = {"chained": "chained scipy.ndimage (order 3) + one npz per sample",
         "single-affine": "single-affine scipy.ndimage (order 1) + one npz per sample"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="brats,synapse", help="comma-separated: brats, synapse")
    ap.add_argument("--workers", type=int, default=ncpu(), help="workers of the parallel runs (default: all CPUs)")
    ap.add_argument("--naive-samples", type=int, default=300,
                    help="samples timed for each straightforward version (its samples/s stands for the whole set)")
    ap.add_argument("--format", default="zarr", choices=["zarr", "hdf5"])
    ap.add_argument("--append", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()
    if not data_root().is_dir():
        sys.exit(f"real sample data not found at {data_root()} (set EXEMPLAR_SAM_DATA)")
    header = ("| preset | method | workers | samples | wall s | build s | samples/s | CPU s | samples/CPU-s "
              "| MB written | MB/s | load avg |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, notes = [], []
    loads = [os.getloadavg()[0]]
    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))

    def emit(preset: str, method: str, workers: int, r: dict) -> None:
        rows.append(fmt_row(preset, method, workers, r))
        loads.append(r.get("load", loads[-1]))
        print(rows[-1], flush=True)

    try:
        for name in [p.strip() for p in args.presets.split(",") if p.strip()]:
            preset = PRESETS[name]
            ours_w = run_ours(preset, tmp / f"{name}_w{args.workers}", args.workers, args.format)
            emit(name, f"synth build, end to end ({args.format})", args.workers, ours_w)
            shutil.rmtree(tmp / f"{name}_w{args.workers}", ignore_errors=True)
            try:
                job = prepare(preset, tmp / f"{name}_job")
            except Exception as exc:  # e.g. missing data
                emit(name, "synth build, shard phase", 1, {"error": " ".join(str(exc).split())})
                continue
            ours_1 = run_ours_shards(job, 1)
            emit(name, f"synth build, shard phase ({args.format})", 1, ours_1)
            ours_n = run_ours_shards(job, args.workers)
            emit(name, f"synth build, shard phase ({args.format})", args.workers, ours_n)
            naive = {}
            for variant in ("chained", "single-affine"):
                naive[variant] = run_naive(job, tmp / f"{name}_naive", args.naive_samples, variant)
                emit(name, f"{NAIVE[variant]} ({args.naive_samples} timed, rate extrapolated)", 1,
                     naive[variant])
            per_cpu = lambda r: r["samples"] / r["cpu"]  # noqa: E731
            ratios = "; ".join(
                f"vs {v}: {ours_1['rate'] / naive[v]['rate']:.1f}x samples/s ({per_cpu(ours_1) / per_cpu(naive[v]):.1f}x "
                f"per CPU-second)" for v in ("chained", "single-affine"))
            notes.append(f"{name}: one worker {ratios}"
                         + (f"; {args.workers} workers: {preset['num_samples']} samples in {ours_w['wall']:.2f} s wall "
                            f"end to end ({ours_w['cpu']:.1f} CPU-s)" if "error" not in ours_w else ""))
            print(notes[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = (f"{platform.node()}: {cpu_model()}, {ncpu()} CPUs, Python {platform.python_version()}, "
               f"{platform.system()} {platform.release()}")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([header, *rows]) + "\n"
    load_line = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} during the run on {ncpu()} CPUs"
    print()
    print(f"{when}; {machine}; {load_line}")
    print(text)
    for n in notes:
        print(n)
    if args.append:
        section = (f"\n## Build throughput (`python bench/bench_build.py`), {when}\n\n"
                   f"Machine: {machine}; {load_line} (last column: at the start of each row; a load above "
                   f"the CPU count slows every figure).\n\n{text}\n"
                   + "".join(f"- {n}\n" for n in notes))
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(section)
        print(f"appended to {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
