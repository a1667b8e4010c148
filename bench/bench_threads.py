"""Thread settings of `train fit` (and `train eval`) on an idle and on a busy machine, in one run.

Why: with other work on the cores, torch's OpenMP threads that spin-wait for each other made the
default `train fit` several times slower than `--num-threads 1` (issue 14). This script runs the
real CLI in fresh processes, 100 tiny steps by default, with:

* ``default``: no thread flag, a clean environment (what a new user gets);
* ``threads=N``: ``--num-threads N`` for N = 1 .. CPUs;
* ``threads=CPUs, libgomp default wait`` (``--before``): the command as it ran before the
  thread defaults (all CPUs, libgomp's own spin-then-sleep wait policy; the CLI is entered
  without its environment defaults);
* ``threads=CPUs, OMP_WAIT_POLICY=ACTIVE``: the spinning extreme;

each under two conditions: ``idle`` (nothing started by this script; the machine may be shared,
so the 1-minute load average is recorded) and ``busy`` (one CPU-bound process per CPU, started by
this script, ``while True: pass``). The time is the training loop's own seconds (the "done: ...
X s" line of `train fit`, so the ~5 s of start-up and imports, equal for every setting, do not
dilute the ratio); wall time of the whole command is given too. The default and the ``--num-threads N``
settings run ``--repeat`` interleaved rounds (best counts); the two spinning settings run once
and are stopped at ``--cap`` times the best time so far (reported as "> limit"). The ratio
default/best is printed per condition.

With ``--eval`` it also times `train eval` of the first run on the demo test volumes (slices/s as
reported by the command) for each setting.

Usage:  python bench/bench_threads.py [--steps 100] [--timeout 400] [--eval] [--append]
``--append`` adds a dated section to BENCHMARKS.md (re-read just before writing).
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, load_average, ncpu  # noqa: E402

# Enter the train CLI without train.cli.main's environment defaults (the "before" behaviour).
RAW_ENTRY = ("import sys; from shared.cli_support import run_cli; from train.cli import cli; "
             "run_cli(cli, sys.argv[1:])")
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")


@dataclass
class Setting:
    label: str
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    raw_entry: bool = False


@dataclass
class Row:
    condition: str
    setting: str
    loop_s: float | None      # None: timed out
    wall_s: float
    load_before: float
    load_after: float
    eval_rate: float | None = None
    limit: float = 0.0        # the time limit it ran under


def settings(cpus: int, before: bool) -> list[Setting]:
    out = [Setting("default")]
    out += [Setting(f"--num-threads {n}", ["--num-threads", str(n)]) for n in range(1, cpus + 1)]
    if before:
        out.append(Setting(f"--num-threads {cpus}, libgomp default wait (before)",
                           ["--num-threads", str(cpus)], raw_entry=True))
    out.append(Setting(f"--num-threads {cpus}, OMP_WAIT_POLICY=ACTIVE", ["--num-threads", str(cpus)],
                       env={"OMP_WAIT_POLICY": "ACTIVE"}))
    return out


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def train_cmd(s: Setting) -> list[str]:
    return [sys.executable, "-c", RAW_ENTRY] if s.raw_entry else [sys.executable, "-m", "train"]


def run_fit(s: Setting, data: Path, out: Path, steps: int, timeout: float) -> tuple[float | None, float]:
    cmd = train_cmd(s) + ["fit", "--shards", str(data), "--model", "tiny", "--steps", str(steps),
                          "--out", str(out), "--no-progress", *s.flags]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=clean_env(s.env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    m = re.search(r"done: .*?, ([0-9.]+) s, ", proc.stdout)
    if not m:
        raise SystemExit(f"no 'done:' line in the output of {' '.join(cmd)}:\n{proc.stdout[-2000:]}")
    return float(m.group(1)), wall


def run_eval(s: Setting, run: Path, test: Path, out: Path, timeout: float) -> float | None:
    cmd = train_cmd(s) + ["eval", "--run", str(run), "--shards", str(test), "--out", str(out), *s.flags]
    try:
        proc = subprocess.run(cmd, env=clean_env(s.env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    m = re.search(r"\(([0-9.]+) slices/s\)", proc.stdout)
    return float(m.group(1)) if m else None


def prepare_data(work: Path, with_eval: bool) -> tuple[Path, Path | None]:
    env = clean_env({})
    data = work / "data"
    subprocess.run([sys.executable, "-m", "synth", "build", "--dataset", "demo-brain", "--exemplars", "20",
                    "--out", str(data), "--no-progress"], env=env, check=True, capture_output=True)
    test = None
    if with_eval:
        test = work / "test"
        subprocess.run([sys.executable, "-m", "synth", "pack", "--dataset", "demo-brain", "--split", "test",
                        "--out", str(test), "--no-progress"], env=env, check=True, capture_output=True)
    return data, test


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def fmt(v: float | None, timeout: float) -> str:
    return f"> {timeout:.0f}" if v is None else f"{v:.1f}"


def best_rows(rows: list[Row]) -> list[Row]:
    """Per (condition, setting): the fastest run (a timed-out one only if none finished)."""
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        key = (r.condition, r.setting)
        old = best.get(key)
        if old is None or (r.loop_s is not None and (old.loop_s is None or r.loop_s < old.loop_s)):
            best[key] = r
    return list(best.values())


def table(rows: list[Row], with_eval: bool, steps: int) -> str:
    head = (f"| condition | setting | runs | {steps}-step loop s (best) | ratio to best setting | "
            "whole command s | load avg before / after |")
    sep = "|---|---|---:|---:|---:|---:|---|"
    if with_eval:
        head += " eval slices/s |"
        sep += "---:|"
    lines = [head, sep]
    for r in best_rows(rows):
        sub = [x for x in best_rows(rows) if x.condition == r.condition and x.loop_s is not None]
        best = min(x.loop_s for x in sub)
        n = sum(1 for x in rows if (x.condition, x.setting) == (r.condition, r.setting))
        ratio = f"> {r.limit / best:.1f}" if r.loop_s is None else f"{r.loop_s / best:.2f}"
        line = (f"| {r.condition} | {r.setting} | {n} | {fmt(r.loop_s, r.limit)} | {ratio} | {r.wall_s:.1f} | "
                f"{r.load_before:.1f} / {r.load_after:.1f} |")
        if with_eval:
            line += f" {'-' if r.eval_rate is None else f'{r.eval_rate:.1f}'} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def verdicts(rows: list[Row]) -> list[str]:
    out = []
    for cond in dict.fromkeys(r.condition for r in rows):
        sub = [r for r in best_rows(rows) if r.condition == cond]
        best = min((r for r in sub if r.loop_s is not None), key=lambda r: r.loop_s)
        default = next(r for r in sub if r.setting == "default")
        if default.loop_s is None:
            out.append(f"{cond}: default timed out")
        else:
            out.append(f"{cond}: default {default.loop_s:.1f} s, best {best.loop_s:.1f} s ({best.setting}), "
                       f"ratio {default.loop_s / best.loop_s:.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=400.0, help="Per command, seconds.")
    ap.add_argument("--conditions", default="idle,busy")
    ap.add_argument("--repeat", type=int, default=2, help="Rounds of the default and --num-threads N settings.")
    ap.add_argument("--cap", type=float, default=3.0,
                    help="Stop a spinning setting at this multiple of the condition's best time so far.")
    ap.add_argument("--no-before", action="store_true", help="Skip the 'before' (libgomp default) setting.")
    ap.add_argument("--only", default="", help="Run only these settings: labels as printed, separated by ';'.")
    ap.add_argument("--eval", action="store_true", help="Also time `train eval` per setting.")
    ap.add_argument("--append", action="store_true", help="Append the result to BENCHMARKS.md.")
    args = ap.parse_args()

    cpus = ncpu()
    started = dt.datetime.now(dt.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    rows: list[Row] = []
    try:
        data, test = prepare_data(work, args.eval)
        for cond in args.conditions.split(","):
            load = start_load(cpus) if cond == "busy" else []
            try:
                if load:
                    time.sleep(2.0)
                chosen = [s for s in settings(cpus, not args.no_before)
                          if not args.only or s.label in args.only.split(";")]
                plain = [s for s in chosen if not s.label.startswith(f"--num-threads {cpus},")]
                extreme = [s for s in chosen if s not in plain]
                # Rounds of the plain settings, interleaved so a change of the machine's load hits
                # them alike (best of the rounds counts), then each spinning setting once, stopped
                # at --cap x the best time so far (it only has to show how much slower it is).
                plan = [(r, s) for r in range(args.repeat) for s in plain] + [(0, s) for s in extreme]
                for r, s in plan:
                    done = [x for x in rows if x.condition == cond and x.loop_s is not None]
                    startup = max((x.wall_s - x.loop_s for x in done), default=0.0)
                    limit = (args.timeout if s in plain or not done else
                             min(args.timeout, startup + args.cap * min(x.loop_s for x in done) + 10))
                    out = work / f"run-{cond}-{r}-{len(rows)}"
                    lb = load_average()
                    loop_s, wall = run_fit(s, data, out, args.steps, limit)
                    row = Row(cond, s.label, loop_s, wall, lb, load_average(), limit=limit - startup)
                    if args.eval and loop_s is not None and test is not None:
                        row.eval_rate = run_eval(s, out, test, work / f"eval-{cond}-{len(rows)}", args.timeout)
                    rows.append(row)
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"{cond:5s} {s.label:55s} loop {fmt(loop_s, row.limit):>7s} s  wall {wall:6.1f} s  "
                          f"load {row.load_before:.1f}/{row.load_after:.1f}"
                          + (f"  eval {row.eval_rate} slices/s" if args.eval else ""), flush=True)
            finally:
                stop_load(load)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    what = (f"`python bench/bench_threads.py --steps {args.steps}{' --eval' if args.eval else ''}`: "
            f"`train fit --model tiny --steps {args.steps}` (batch 8, 128 px, demo-brain, 4500 samples) "
            f"in a fresh process per setting")
    md = table(rows, args.eval, args.steps)
    text = (f"## Thread defaults: `train fit` idle and busy (`bench/bench_threads.py`), "
            f"{started:%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {cpu_model()}, {cpus} CPUs, Python {platform.python_version()}, torch {torch.__version__}. "
            f"{what}. idle = nothing started by the script (the machine is shared with other jobs: see the "
            f"load column); busy = {cpus} extra `while True: pass` processes, one per CPU.\n\n"
            + md + "\n" + "\n".join(f"- {v}" for v in verdicts(rows)) + "\n")
    print()
    print(text)
    if args.append:
        path = ROOT / "BENCHMARKS.md"
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
