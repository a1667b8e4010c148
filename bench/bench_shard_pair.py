"""Before/after CPU cost per sample of the build's shard phase, two checkouts side by side.

On a noisy shared machine, two runs one after the other can differ by 30 % with the same code.
This runs the shard phase of ``bench/bench_build.py``'s presets (bank in memory, 1 worker, CPU
seconds of ``synth.building.run.run_job``) for two checkouts **at the same time**, one process per core
(``OMP_NUM_THREADS=1``), ``--reps`` times each, and reports the ratio within each pair of runs
(the same minutes of the same machine), their median and the ratio of the minima.

Usage: python bench/bench_shard_pair.py --before /tmp/before --after . [--presets brats,synapse] [--reps 5]
(``git worktree add /tmp/before <commit>`` makes a checkout; each side imports its own synth/ and
its own bench/bench_build.py.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run inside a checkout: its bench_build.prepare builds the job (bank in memory), then the shard
# phase is timed REPS times, each into a fresh folder. Prints one JSON line.
_CHILD = r"""
import json, os, shutil, sys, tempfile, time
from pathlib import Path
code, preset, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [code, code + "/bench"]
import bench_build as bb
try:  # synth/ by pipeline stage (issue 32)
    from synth.building.run import run_job
except ImportError:  # checkouts from before it (e.g. 7ab68b0, the build before the anatomy rule)
    from synth.build import run_job
cpu = []
for _ in range(reps):
    tmp = tempfile.mkdtemp()
    try:
        job = bb.prepare(bb.PRESETS[preset], Path(tmp) / "ds")
        c0 = time.process_time()
        run_job(job, workers=1, progress=False, log=lambda m: None)
        cpu.append(time.process_time() - c0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps({"cpu": cpu, "samples": bb.PRESETS[preset]["num_samples"]}))
"""


def run_pair(before: Path, after: Path, preset: str, reps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.setdefault("EXEMPLAR_SAM_DATA", str(ROOT.parent / "shared" / "data"))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(code), preset, str(reps)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(code))
             for code in (before, after)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"{preset}: a side failed:\n{stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    b, a = out[0]["cpu"], out[1]["cpu"]
    pairs = [y / x for x, y in zip(b, a)]
    return {"preset": preset, "samples": out[0]["samples"], "before": b, "after": a,
            "min_ratio": min(a) / min(b), "median_pair": statistics.median(pairs), "pairs": pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="checkout of the code before")
    ap.add_argument("--after", type=Path, default=ROOT, help="checkout of the code after (default: this one)")
    ap.add_argument("--presets", default="brats,synapse")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print("| preset | samples | before CPU s | after CPU s | after/before: min | median of pairs | pairs |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        r = run_pair(args.before.resolve(), args.after.resolve(), preset, args.reps)
        fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        print(f"| {preset} | {r['samples']} | {fmt(r['before'])} | {fmt(r['after'])} | {r['min_ratio']:.2f} | "
              f"{r['median_pair']:.2f} | {min(r['pairs']):.2f}-{max(r['pairs']):.2f} |", flush=True)


if __name__ == "__main__":
    main()
