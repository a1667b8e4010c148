"""Scaling to the full BraTS release: peak memory and wall time of `synth build` vs the patient count.

Makes a 240-patient cohort in a temporary folder: the 30 cases of ``brats2018_cohort`` linked 8
times under new ids (``HGG/<case>x<r>/<case>x<r>_flair.nii.gz`` -> the original file; the brats
source takes a case's id from its folder name and finds ``<id>_flair`` / ``<id>_seg`` in it, so
renamed links are distinct patients to it; the seeded 80/20 split gives 192 train cases). Then,
for each ``--workers`` value, back to back:

* ``read baseline``: read and decompress every FLAIR and label file of the cases the build
  reads, once, on the same number of processes: ``gzip`` (bytes -> stdlib ``gzip.decompress``),
  ``nibabel`` (``np.asanyarray(nib.load(f).dataobj)``, what any NIfTI reader does), ``isal``
  (bytes -> ISA-L ``igzip.decompress``, if installed) and ``libdeflate`` (bytes -> libdeflate's
  ``gzip_decompress``, what the build itself uses when the fast-read extra is installed
  (``shared/gunzip.py``): the true floor for it);
* ``synth build --dataset brats --exemplars 150`` (default split train, 4500 samples) in a fresh
  process, twice: once timed alone (``build_s``), once with its peak memory measured over the whole
  process tree (parent + workers) by polling ``/proc`` every 0.1 s (``build_sampled_s`` is that
  run's wall time; the sampler costs ~8 ms of CPU a poll): "peak PSS" (proportional set size: pages shared by forked workers counted
  once, the memory the build really takes) and "peak RSS sum" (every process's RSS added up, shared
  pages counted in each: an upper bound);
* the same for the 30-patient cohort end to end (scan, select, synthesize 4500, write).

Each build row also splits the wall time: ``synthesis_s`` (the build's own "built N samples in X s")
and ``scan_s`` = wall - synthesis (start-up, the two streaming passes over every volume and the
selection: the part that reads), with ``scan_ratio_*`` against the read baselines.

``--code LABEL=DIR`` (repeatable) runs the build from each checkout (e.g. ``git worktree add
/tmp/before main``) right after the same baseline, for before/after tables; ``--kill-above-gb`` stops a build whose tree exceeds that much memory
(the old code needs ~16 GB for 240 patients; the machine is shared) and reports the peak as
"> limit".

Usage: python bench/bench_scale.py [--workers 1,2] [--cohorts 240,30] [--code after=. --code before=/tmp/before]
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, ncpu  # noqa: E402
from shared.gunzip import inflater_name  # noqa: E402


def data_root() -> Path:
    return Path(os.environ.get("EXEMPLAR_SAM_DATA", ROOT.parent / "shared" / "data")).resolve()


def make_cohort(src: Path, dst: Path, copies: int) -> list[str]:
    """``copies`` links of every case of ``src`` under new ids; returns the ids."""
    ids = []
    for grade in ("HGG", "LGG"):
        if not (src / grade).is_dir():
            continue
        for case_dir in sorted(p for p in (src / grade).iterdir() if p.is_dir()):
            case = case_dir.name
            for r in range(copies):
                new = case if copies == 1 else f"{case}x{r}"
                d = dst / grade / new
                d.mkdir(parents=True)
                for suffix in ("flair", "seg"):
                    (d / f"{new}_{suffix}.nii.gz").symlink_to(case_dir / f"{case}_{suffix}.nii.gz")
                ids.append(new)
    return ids


# --------------------------------------------------------------------------------------------
# Memory of a process tree


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(sum of PSS, sum of RSS, processes) in bytes over ``pid`` and its descendants."""
    kids = _children_map()
    todo, pids = [pid], []
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(kids.get(p, []))
    pss = rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return pss, rss, len(pids)


def run_measured(cmd: list[str], env: dict[str, str], kill_above: float | None, cwd: str | None = None,
                 sample_memory: bool = True) -> dict:
    """Run ``cmd``; peak tree PSS / RSS sum (sampled every 0.1 s unless ``sample_memory`` is
    False), wall time, exit code, output tail."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"pss": 0, "rss": 0, "procs": 0}
    killed = [False]
    out_lines: list[str] = []

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out_lines.append(line)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    while sample_memory and proc.poll() is None:
        pss, rss, n = tree_memory(proc.pid)
        peak["pss"], peak["rss"], peak["procs"] = max(peak["pss"], pss), max(peak["rss"], rss), max(peak["procs"], n)
        if kill_above and rss > kill_above * 1e9:
            killed[0] = True
            proc.kill()  # our own child, by pid
            break
        time.sleep(0.1)
    proc.wait()
    th.join(timeout=5)
    return {"wall": time.perf_counter() - t0, "rc": proc.returncode, "killed": killed[0],
            "peak_pss": peak["pss"], "peak_rss": peak["rss"], "procs": peak["procs"],
            "tail": "".join(out_lines[-3:]).strip(), "synthesis_s": synthesis_seconds(out_lines)}


def synthesis_seconds(lines: list[str]) -> float | None:
    """The build's own synthesis time ("built N samples in X s"): the rest of the wall time is
    start-up, the scan (reading and checking every volume) and selection."""
    import re

    for line in lines:
        m = re.search(r"built \d+ samples in ([\d.]+) s", line)
        if m:
            return float(m.group(1))
    return None


# --------------------------------------------------------------------------------------------
# Read baseline


def _inflater(how: str):
    """bytes -> inflated bytes: stdlib gzip, ISA-L (if installed) or libdeflate (extra fast-read)."""
    if how == "isal":
        from isal.igzip import decompress
        return decompress
    if how == "libdeflate":
        from deflate import gzip_decompress
        return gzip_decompress
    return gzip.decompress


def _read_inflating(how: str, paths: tuple[str, ...]) -> int:
    """Read each file whole and inflate it: the ``gzip``, ``isal`` and ``libdeflate`` baselines."""
    decompress = _inflater(how)
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += len(decompress(f.read()))
    return n


def _read_nibabel(paths: tuple[str, ...]) -> int:
    import nibabel as nib
    import numpy as np

    return sum(int(np.asanyarray(nib.load(p).dataobj).nbytes) for p in paths)


def read_baseline(files: list[tuple[str, ...]], workers: int, how: str) -> float:
    from functools import partial

    if how not in ("gzip", "nibabel", "isal", "libdeflate"):
        raise SystemExit(f"--baseline: unknown read baseline {how!r} (gzip, nibabel, isal, libdeflate)")
    fn = _read_nibabel if how == "nibabel" else partial(_read_inflating, how)
    t0 = time.perf_counter()
    if workers == 1:
        for paths in files:
            fn(paths)
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap(fn, files):
                pass
    return time.perf_counter() - t0


def train_files(root: Path) -> list[tuple[str, ...]]:
    """The FLAIR + label files of the cases `synth build` reads (default split: train)."""
    from shared.sources import open_source
    from shared.splits import resolve_split

    source = open_source("brats", root)
    return [tuple(str(p) for p in source.files(c)) for c in resolve_split(source, "train")]


def dataset_digest(out: Path) -> str | None:
    """sha256 over the shard hashes and samples.jsonl: equal digests = byte-identical samples."""
    import hashlib

    try:
        info = json.loads((out / "dataset.json").read_text())
        h = hashlib.sha256()
        for s in info["shards"]:
            h.update(s["sha256"].encode())
        h.update((out / "samples.jsonl").read_bytes())
        return h.hexdigest()[:16]
    except (OSError, KeyError, ValueError):
        return None


def loadavg() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--cohorts", default="240,30", help="patients: 30 x k links (240 = 8 copies)")
    ap.add_argument("--code", action="append", default=None, metavar="LABEL=DIR",
                    help="a checkout whose synth to run, named LABEL in the table (repeatable: each build "
                         "runs right after the same baseline; default: after=this checkout)")
    ap.add_argument("--kill-above-gb", type=float, default=None)
    ap.add_argument("--baseline", default="gzip,nibabel,libdeflate",
                    help="read baselines: gzip (stdlib), nibabel, isal (ISA-L inflate, if installed), libdeflate "
                         "(the fast-read extra, what the build uses)")
    ap.add_argument("--json", type=Path, default=None, help="append result rows here (JSON lines)")
    ap.add_argument("--keep", type=Path, default=None, help="make the cohorts here instead of a temp folder")
    ap.add_argument("--pool-sizes", default=None, metavar="N,N,...",
                    help="instead: build the largest cohort with 1 worker once per --pool-size N "
                         "(0 = no limit) and report peak memory and the bank's background storage")
    args = ap.parse_args()
    if args.pool_sizes:
        pool_size_table(args)
        return
    src = data_root() / "brats2018_cohort"
    base = Path(tempfile.mkdtemp(prefix="bench_scale_")) if args.keep is None else args.keep
    python = sys.executable
    codes = [tuple(c.split("=", 1)) for c in (args.code or [f"after={ROOT}"])]
    rows = []
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {cpu_model()}, "
          f"{ncpu()} CPUs, codes {codes}, inflater {inflater_name()}", flush=True)
    try:
        for patients in (int(x) for x in args.cohorts.split(",")):
            copies = max(1, patients // 30)
            cohort = base / f"cohort{patients}"
            if not cohort.exists():
                make_cohort(src, cohort, copies)
            files = train_files(cohort)
            for workers in (int(x) for x in args.workers.split(",")):
                base_row = {"patients": patients, "read_cases": len(files), "workers": workers}
                for how in args.baseline.split(","):
                    base_row[f"load_{how}"] = round(loadavg(), 1)
                    base_row[f"read_{how}_s"] = round(read_baseline(files, workers, how), 2)
                for label, code in codes:
                    env = dict(os.environ, PYTHONPATH=str(Path(code).resolve()), OMP_NUM_THREADS="1")
                    row = {"code": label, **base_row}
                    out = base / f"ds_{patients}_{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = [python, "-m", "synth", "build", "--dataset", "brats", "--root", str(cohort),
                           "--exemplars", "150", "--workers", str(workers), "--no-progress", "--out", str(out)]
                    row["load_build"] = round(loadavg(), 1)
                    cwd = str(Path(code).resolve())  # python -m: cwd first on sys.path
                    # timed without the memory sampler (reading smaps_rollup of every process ten
                    # times a second costs ~8 ms of CPU a poll and takes the processes' mmap lock),
                    # then run again for the memory peak
                    res = run_measured(cmd, env, args.kill_above_gb, cwd=cwd, sample_memory=False)
                    row["digest"] = dataset_digest(out)
                    shutil.rmtree(out, ignore_errors=True)
                    mem = run_measured(cmd, env, args.kill_above_gb, cwd=cwd)
                    shutil.rmtree(out, ignore_errors=True)
                    row.update(build_s=round(res["wall"], 2), rc=res["rc"] or mem["rc"], killed=mem["killed"],
                               build_sampled_s=round(mem["wall"], 2),
                               peak_pss_gb=round(mem["peak_pss"] / 1e9, 2),
                               peak_rss_sum_gb=round(mem["peak_rss"] / 1e9, 2), procs=mem["procs"],
                               tail=res["tail"][-200:])
                    if res["synthesis_s"] is not None:  # the part of the build that reads: all but synthesis
                        row["synthesis_s"] = res["synthesis_s"]
                        row["scan_s"] = round(res["wall"] - res["synthesis_s"], 2)
                    for how in args.baseline.split(","):
                        row[f"ratio_{how}"] = round(row["build_s"] / row[f"read_{how}_s"], 2)
                        if "scan_s" in row:
                            row[f"scan_ratio_{how}"] = round(row["scan_s"] / row[f"read_{how}_s"], 2)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def pool_size_table(args: argparse.Namespace) -> None:
    patients = max(int(x) for x in args.cohorts.split(","))
    base = Path(tempfile.mkdtemp(prefix="bench_scale_")) if args.keep is None else args.keep
    cohort = base / f"cohort{patients}"
    if not cohort.exists():
        make_cohort(data_root() / "brats2018_cohort", cohort, max(1, patients // 30))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    try:
        for size in args.pool_sizes.split(","):
            out = base / f"pool_{size}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "synth", "build", "--dataset", "brats", "--root", str(cohort), "--exemplars",
                   "150", "--workers", "1", "--no-progress", "--pool-size", size, "--out", str(out)]
            load = loadavg()
            res = run_measured(cmd, env, args.kill_above_gb, cwd=str(ROOT))
            info = json.loads((out / "dataset.json").read_text()) if (out / "dataset.json").exists() else {}
            meta = info.get("exemplar_list", {})
            print(json.dumps({"pool_size": int(size), "load": round(load, 1), "build_s": round(res["wall"], 1),
                              "peak_pss_gb": round(res["peak_pss"] / 1e9, 2), "pool": len(info.get("background_pool", [])),
                              "eligible": meta.get("selection", {}).get("background_rule", {}).get("eligible"),
                              "storage": meta.get("background_storage")}), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
