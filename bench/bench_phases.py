"""Where a `synth build` spends its time: wall and CPU seconds per phase, and the parent's threads.

Runs ``synth build ARGS`` in this process (so it can time the phases) and prints, per phase, the
wall seconds and the CPU seconds of this process and of its worker processes (children that have
finished, so a pool's CPU shows up when its pass ends):

* ``labels`` (with the start-up) / ``images`` (with the exemplar choice): the two streaming passes
  of the scan (``synth.selection.scanning.map_volumes``); ``read`` for an ``--exemplar-list`` build;
* ``restore, select``: the rest of the scan (until d62b9d3, the kept pool slices made whole
  again) and the final selection; ``bank``; ``output folder``; ``shards`` (synthesis and writing); ``finalize``; and
  ``summary`` (the end-of-build report).

It also samples the CPU time of every thread of this process (``/proc/self/task``, Linux), which
is how the spinning pool thread of issue 12 was found (``synth/base/parallel.py``, ``QuietPool``).

Usage: python bench/bench_phases.py [--code DIR] [--json FILE] -- --dataset brats --root COHORT \\
           --exemplars 150 --workers 2 --no-progress --out /tmp/ds
(``--code``: a checkout whose synth to time, e.g. ``git worktree add /tmp/before <commit>``.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PhaseClock:
    """Wall and CPU (self, children) stamps; ``phases()`` turns consecutive stamps into rows."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stamps: list[tuple[str, float, float, float]] = []

    def stamp(self, name: str) -> None:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.stamps.append((name, time.perf_counter() - self.t0, me.ru_utime + me.ru_stime,
                            kids.ru_utime + kids.ru_stime))

    def phases(self) -> list[dict[str, Any]]:
        rows = []
        for (_, w0, s0, c0), (name, w1, s1, c1) in zip(self.stamps, self.stamps[1:]):
            rows.append({"phase": name, "wall_s": round(w1 - w0, 3), "parent_cpu_s": round(s1 - s0, 3),
                         "workers_cpu_s": round(c1 - c0, 3)})
        return rows


class ThreadCPU:
    """Samples each thread's CPU seconds of this process every 50 ms (Linux /proc)."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench_phases")
        self.thread.start()

    def _run(self) -> None:
        task_dir = Path(f"/proc/{os.getpid()}/task")
        while not self.done.wait(0.05):
            for t in threading.enumerate():
                if t.native_id is not None:
                    self.names[t.native_id] = t.name
            for d in task_dir.glob("*"):
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                self.seen[int(d.name)] = (int(fields[11]) + int(fields[12])) / self.tick

    def stop(self) -> list[dict[str, Any]]:
        self.done.set()
        self.thread.join()
        rows = [{"thread": self.names.get(tid, str(tid)), "cpu_s": round(cpu, 2)} for tid, cpu in self.seen.items()]
        return sorted(rows, key=lambda r: -r["cpu_s"])


def _wrap(module: Any, name: str, on_start: Callable[[], None], on_end: Callable[[], None]) -> None:
    original = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        on_start()
        try:
            return original(*args, **kwargs)
        finally:
            on_end()

    setattr(module, name, wrapped)


def main() -> None:
    argv = sys.argv[1:]
    build_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="append the rows to this JSON lines file")
    ap.add_argument("--code", type=Path, help="time this checkout's synth (default: this one)")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if not build_args:
        ap.error("give the build's arguments after --")
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))

    import synth.building.run as build
    import synth.building.jobs as jobs
    import synth.selection.scanning as scanning
    from synth.cli import cli

    clock = PhaseClock()
    names = {"_label_task": "labels", "_image_task": "images", "_read_case": "read"}
    original_map = scanning.map_volumes

    def map_volumes(fn, *a, **k):  # a generator: stamp when it is exhausted
        yield from original_map(fn, *a, **k)
        clock.stamp(names.get(fn.__name__, fn.__name__))

    scanning.map_volumes = map_volumes
    jobs.map_volumes = map_volumes
    # end stamps: each phase runs from the previous stamp to its own
    _wrap(jobs, "select_exemplars", lambda: None,
          lambda: clock.stamps[-1][0] == "images" and clock.stamp("restore, select"))
    _wrap(jobs, "make_bank", lambda: None, lambda: clock.stamp("bank"))
    _wrap(build, "run_shards", lambda: clock.stamp("output folder"), lambda: clock.stamp("shards"))
    _wrap(build, "finalize", lambda: None, lambda: clock.stamp("finalize"))
    threads = ThreadCPU()
    clock.stamp("start")
    try:
        cli.main(["build", *build_args], standalone_mode=False)
    finally:
        clock.stamp("summary")
        thread_rows = threads.stop()
    rows = clock.phases()
    total = {"phase": "total", "wall_s": round(clock.stamps[-1][1], 3),
             "parent_cpu_s": round(clock.stamps[-1][2] - clock.stamps[0][2], 3),
             "workers_cpu_s": round(clock.stamps[-1][3] - clock.stamps[0][3], 3)}
    print("| phase | wall s | parent CPU s | workers CPU s |\n|---|---:|---:|---:|")
    for r in [*rows, total]:
        print(f"| {r['phase']} | {r['wall_s']:.2f} | {r['parent_cpu_s']:.2f} | {r['workers_cpu_s']:.2f} |")
    print("\nparent threads, CPU s: " + ", ".join(f"{r['thread']} {r['cpu_s']:.2f}" for r in thread_rows[:6]))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"args": build_args, "phases": [*rows, total], "threads": thread_rows}) + "\n")


if __name__ == "__main__":
    main()
