"""Runs the steps of an experiment grid: each step once (its completion marker), under a lock
per step, with its command and wall time logged; several fits at once on a thread pool that stops
at the first failure."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, CancelledError, ThreadPoolExecutor, wait
from pathlib import Path

from bench.experiment_config import PROJECT_ROOT


def tool(name: str) -> str:
    """The CLI next to this interpreter (the venv's), so the grid uses the installed tools."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


class Runner:
    """Runs the grid's steps. With jobs > 1 each step's output goes to OUT/logs/<step>.log."""

    def __init__(self, out: Path, dry_run: bool = False, jobs: int = 1):
        self.out = out
        self.dry_run = dry_run
        self.jobs = jobs
        self.log_path = out / "log.jsonl"
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        """One whole line to stdout: with --jobs > 1, print()'s separate newline write interleaves."""
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run(self, key: str, argv: list[str], done_marker: Path, output_dir: Path | None = None) -> None:
        """Run a step unless its completion marker exists; record the command and wall time.

        output_dir: the folder the step writes (removed first if an interrupted run left it)."""
        if done_marker.exists():
            self.say(f"[skip] {key}: {done_marker} exists")
            return
        self.say(f"[run ] {key}: {' '.join(argv)}")
        if self.dry_run:
            return
        # Two grid processes with overlapping --only-* selections must not run one step at once:
        # the second would remove the first's unfinished output as an interrupted one. The step's
        # lock is shared/locks.py's flock, which the kernel drops when its holder dies.
        from shared.locks import FolderLock, LockBusy

        lock_dir = self.out / "locks" / key
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(lock_dir, shared=False)
        try:
            lock.acquire()
        except LockBusy:
            owner = lock.owner()
            who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise SystemExit(f"experiment step {key!r} is running in another process ({who}; lock "
                             f"{lock.path}): give this one other --only-folds / --only-seeds / --only-counts") from None
        try:
            lock.write_owner()
            if done_marker.exists():  # another process finished it since the check above
                self.say(f"[skip] {key}: {done_marker} exists")
                return
            self._run_unlocked(key, argv, output_dir)
        finally:
            lock.release()

    def _run_unlocked(self, key: str, argv: list[str], output_dir: Path | None) -> None:
        if output_dir is not None and output_dir.exists():
            shutil.rmtree(output_dir)  # an incomplete output of an interrupted step
        start = time.perf_counter()
        if self.jobs > 1:
            step_log = self.out / "logs" / f"{key}.log"
            step_log.parent.mkdir(parents=True, exist_ok=True)
            with step_log.open("w") as fh:
                result = subprocess.run(argv, cwd=PROJECT_ROOT, stdout=fh, stderr=subprocess.STDOUT)
        else:
            step_log = None
            result = subprocess.run(argv, cwd=PROJECT_ROOT)
        seconds = time.perf_counter() - start
        with self._lock:
            self.timings[key] = seconds
            with self.log_path.open("a") as fh:
                fh.write(json.dumps({"step": key, "argv": argv, "seconds": round(seconds, 2),
                                     "returncode": result.returncode}) + "\n")
        where = f"see {step_log}" if step_log else "see the output above"
        if result.returncode != 0:
            raise SystemExit(f"experiment step {key!r} failed (exit {result.returncode}); {where}")
        self.say(f"[done] {key}: {seconds:.0f} s")


def run_in_pool(fn, items: list, jobs: int) -> list:
    """``[fn(x) for x in items]`` on ``jobs`` threads, in order. The first failure stops the
    grid: no further item starts (only those already running finish), then its error is raised,
    so a failed fit surfaces at once instead of after every other queued fit has run."""
    stop = threading.Event()

    def guarded(x):
        if stop.is_set():  # checked by the worker itself: a freed thread may take the next item first
            raise CancelledError()
        try:
            return fn(x)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(guarded, x) for x in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        if stop.is_set():
            for f in futures:
                f.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled()]
            raise next(e for e in errors if e is not None and not isinstance(e, CancelledError))
        return [f.result() for f in futures]
