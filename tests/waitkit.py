"""Waiting on a subprocess without depending on how fast the machine is (issue 27).

Tests that signal or kill a running CLI wait for an *event* (a line in a log file, a file, a
line on a pipe), never for a time. Each wait has an upper bound that only a hang reaches
(:data:`HANG`); reaching it, or the process ending before the event, fails the test with what the
process wrote, instead of going on and asserting about a state that was never reached.

A build that must still be running when it is signalled is held: :func:`held_build` runs
``python -m synth build ...`` with ``synth.building.run.build_shard`` wrapped so that each shard from
``hold_from`` on waits forever once its first sample is made (mid-shard, its writer open).
Shards ``0 .. hold_from - 1`` finish (their sidecars appear), the build can never end by itself,
and a signal or kill finds it at the same place on any machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HANG = 600.0  # seconds: only a test that would hang waits this long

_HOLD = """
import os, sys, threading
import synth.building.run
real = synth.building.run.build_shard
hold_from = int(os.environ["EXEMPLAR_SAM_TEST_HOLD_FROM"])
def build_shard(job, k, progress=None):
    if k < hold_from:
        return real(job, k, progress)
    def held(n):
        if progress is not None:
            progress(n)
        threading.Event().wait()  # held mid-shard: the test signals or kills the build here
    return real(job, k, held)
synth.building.run.build_shard = build_shard  # forked workers inherit the wrapper
sys.argv[0] = "synth"
from synth.cli import main
main()
"""


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = HANG) -> None:
    """Return once ``cond()`` holds; fail if ``proc`` ends first or the hang bound passes."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}:\n{out or ''}{err or ''}")
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no {what} after {timeout:.0f} s (hung?):\n{out or ''}{err or ''}")
        time.sleep(0.05)


def log_lines(path: Path) -> int:
    """Complete lines in ``path`` so far (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def held_build(args: list[str], hold_from: int, *, cwd: Path, env: dict[str, str] | None = None,
               **popen_kwargs) -> subprocess.Popen:
    """``synth build *args`` as a subprocess whose shards from ``hold_from`` on never start."""
    full_env = {**(os.environ if env is None else env), "EXEMPLAR_SAM_TEST_HOLD_FROM": str(hold_from)}
    return subprocess.Popen([sys.executable, "-c", _HOLD, *map(str, args)], cwd=cwd, env=full_env, **popen_kwargs)


def finished_shards(out: Path) -> int:
    """Shards of the build in ``out`` whose sidecar has been written."""
    return len(list((out / ".build").glob("shard-*.json")))
