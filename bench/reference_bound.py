"""How far the build can get ahead of the order-1 scipy reference: the per-sample time split into
the work both share and the work each does its own way, and the ratio that split allows.

``bench/bench_build.py`` compares the shard phase of ``synth build`` (1 worker) with the
"single-affine" reference of ``bench/naive_synthesis.py``. The reference calls the same
``synth.synthesis.sample.synthesize_with`` with scipy renderers, so both run the same draws,
background choice, placement search, records and result check ("shared"); they differ only in
rendering (the background ``render`` and each object's ``paste``) and in storage (float16 Zarr
shards with sha256 and manifests vs one ``np.savez_compressed`` per sample). With per-sample
times ``shared``, ``render_ours``, ``store_ours``, ``render_ref``, ``store_ref``::

    ratio = (shared + render_ref + store_ref) / (shared + render_ours + store_ours)
          < (shared + render_ref + store_ref) / shared             (ours free: the bound)

and the ratio reaches ``goal`` only when ``render_ours + store_ours <= reference / goal - shared``
(the budget). For each preset, on one bank in this process, one run, every time in wall-clock
milliseconds per sample of this one process and thread (``perf_counter``; the reference's own
timer is one too, and on an idle machine it is the process's CPU time):

1. the shard phase (``synth.building.run.run_job``, 1 worker: in this process);
2. our synthesis of the first ``--samples`` samples with the two renderers timed (perf_counter
   around each call) and the result check (``floating_objects``, part of shared) timed again on
   the finished samples; storage = 1. minus the synthesis of all samples;
3. the reference (``build_naive``) on the same first ``--samples`` samples, timed the same way.

Usage: python bench/reference_bound.py [--presets brats,synapse] [--samples 300] [--goal 10] [--append]
(``OMP_NUM_THREADS=1``; ``--append`` adds the table to BENCHMARKS.md with the date and machine.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, load_average, ncpu  # noqa: E402


@dataclass(frozen=True)
class Split:
    """Milliseconds per sample of one implementation (``store``: writing, hashing and the build's
    bookkeeping; ``check``: the result check, a part of ``shared``)."""

    shared: float
    render: float  # the background render and the object pastes
    store: float
    check: float

    @property
    def total(self) -> float:
        return self.shared + self.render + self.store


@dataclass(frozen=True)
class Bound:
    ratio: float  # reference total / ours total
    bound: float  # reference total / shared: the ratio if our render and store took no time
    budget: float  # ms per sample our render + store may take for the goal (negative: unreachable)
    ours_own: float  # ms per sample our render + store take


def bound(ours: Split, ref: Split, goal: float) -> Bound:
    """The ratio, its bound and the budget for ``goal`` (shared = the mean of both measurements:
    the same code, measured twice)."""
    shared = 0.5 * (ours.shared + ref.shared)
    return Bound(ratio=ref.total / ours.total, bound=ref.total / shared, budget=ref.total / goal - shared,
                 ours_own=ours.render + ours.store)


def time_synthesis(bank, config, task: str, seed: int, n: int, render: Callable, paste: Callable) -> tuple[float, float, float]:
    """(all, render + paste, check) seconds of ``synthesize_with`` on samples 0..n-1."""
    from synth.synthesis.pixel_checks import floating_objects
    from synth.synthesis.sample import synthesize_with

    spent = [0.0]

    def timed(fn: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return run

    r, p = timed(render), timed(paste)
    outputs, t0 = [], time.perf_counter()
    for i in range(n):
        outputs.append(synthesize_with(i, seed, bank, config, task, r, p))
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    for image, label, record in outputs:
        floating_objects(image, label, task, sorted({o["class"] for o in record["objects"] if o.get("class")}))
    return total, spent[0], time.perf_counter() - t0


def measure(preset_name: str, samples: int, tmp: Path) -> tuple[Split, Split, dict]:
    from bench.bench_build import PRESETS, prepare, run_ours_shards
    from bench.naive_synthesis import VARIANTS, build_naive
    from synth.synthesis.sample import paste_record, render_background

    preset = PRESETS[preset_name]
    job = prepare(preset, tmp / f"{preset_name}_job")
    prod = job.producer
    n_all = job.num_samples
    n = min(samples, n_all)
    load0 = load_average()
    shard = run_ours_shards(job, 1)  # the shard phase, all samples (its "build": wall seconds)
    all_s, _, _ = time_synthesis(prod.bank, prod.config, prod.task, prod.seed, n_all, render_background, paste_record)
    ours_s, ours_r, ours_c = time_synthesis(prod.bank, prod.config, prod.task, prod.seed, n, render_background,
                                            paste_record)
    ref_render, ref_paste = VARIANTS["single-affine"]
    ref_s, ref_r, ref_c = time_synthesis(prod.bank, prod.config, prod.task, prod.seed, n, ref_render, ref_paste)
    ref_total = build_naive(prod.bank, prod.config, prod.task, n=n, seed=prod.seed, out_dir=tmp / f"{preset_name}_ref")
    shutil.rmtree(tmp / f"{preset_name}_ref", ignore_errors=True)
    ms = 1e3 / n
    ours = Split(shared=(ours_s - ours_r) * ms, render=ours_r * ms,
                 store=max(shard["build"] - all_s, 0.0) * 1e3 / n_all, check=ours_c * ms)
    ref = Split(shared=(ref_s - ref_r) * ms, render=ref_r * ms,
                store=max(ref_total["seconds"] - ref_s, 0.0) * ms, check=ref_c * ms)
    info = {"samples": n_all, "timed": n, "shard_ms": shard["build"] * 1e3 / n_all, "ref_ms": ref_total["ms_per_sample"],
            "load": (load0, load_average())}
    return ours, ref, info


def table(rows: list[tuple[str, Split, Split, dict]], goal: float) -> str:
    head = ("| preset | implementation | shared ms (check) | render ms | store ms | total ms | ratio | bound "
            f"| budget for {goal:g}x: render + store <= ms | ours: render + store ms |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, ours, ref, _ in rows:
        b = bound(ours, ref, goal)
        budget = f"{b.budget:.3f}" if b.budget > 0 else f"{b.budget:.3f} (unreachable)"
        lines.append(f"| {name} | ours (shard phase) | {ours.shared:.3f} ({ours.check:.3f}) | {ours.render:.3f} | "
                     f"{ours.store:.3f} | {ours.total:.3f} | **{b.ratio:.1f}x** | {b.bound:.1f}x | {budget} | "
                     f"{b.ours_own:.3f} |")
        lines.append(f"| {name} | single-affine reference | {ref.shared:.3f} ({ref.check:.3f}) | {ref.render:.3f} | "
                     f"{ref.store:.3f} | {ref.total:.3f} | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="brats,synapse", help="comma-separated: brats, synapse")
    ap.add_argument("--samples", type=int, default=300, help="samples timed in the split and for the reference")
    ap.add_argument("--goal", type=float, default=10.0, help="the ratio whose budget is reported")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    import cv2

    from bench.bench_build import data_root
    if not data_root().is_dir():
        sys.exit(f"real sample data not found at {data_root()} (set EXEMPLAR_SAM_DATA)")
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="reference_bound_"))
    rows = []
    try:
        for name in [p.strip() for p in args.presets.split(",") if p.strip()]:
            ours, ref, info = measure(name, args.samples, tmp)
            rows.append((name, ours, ref, info))
            b = bound(ours, ref, args.goal)
            print(f"{name}: shard phase {info['shard_ms']:.3f} ms/sample, reference {info['ref_ms']:.3f} ms/sample "
                  f"(ratio {info['ref_ms'] / info['shard_ms']:.1f}x); split: ratio {b.ratio:.1f}x, bound {b.bound:.1f}x, "
                  f"budget {b.budget:.3f} ms vs ours {b.ours_own:.3f} ms; load {info['load'][0]:.1f}-{info['load'][1]:.1f}",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = (f"{platform.node()}: {cpu_model()}, {ncpu()} CPUs, Python {platform.python_version()}, "
               f"{platform.system()} {platform.release()}")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = table(rows, args.goal)
    print(f"\n{when}; {machine}\n{text}")
    if args.append:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## Reference ratio and its bound (`python bench/reference_bound.py`), {when}\n\n"
                    f"Machine: {machine}.\n\n{text}")
        print(f"appended to {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
