"""bench/experiment_runner.py: one process per grid step (its lock), and a pool that stops at the first failure."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import pytest

from bench.experiment_runner import Runner, run_in_pool

def test_runner_refuses_a_step_another_process_is_running(tmp_path):
    """Two grid processes on one step: the second stops with one line and leaves the first's
    unfinished output alone; a lock file whose holder is gone (no flock on it) is no obstacle."""
    from shared.locks import FolderLock

    out, step_out = tmp_path / "grid", tmp_path / "grid" / "step"
    done = step_out / "DONE"
    argv = [sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(step_out)!r}); "
                                  "p.mkdir(exist_ok=True); (p / 'DONE').write_text('ok')"]
    step_out.mkdir(parents=True)
    (step_out / "partial.npy").write_text("being written")
    lock_dir = out / "locks" / "s0-fit"
    lock_dir.mkdir(parents=True)
    holder = FolderLock(lock_dir, shared=False).acquire()   # a live holder: another open of the lock
    holder.write_owner()
    with pytest.raises(SystemExit, match=f"'s0-fit' is running in another process \\(pid {os.getpid()} on "):
        Runner(out).run("s0-fit", argv, done, step_out)
    assert (step_out / "partial.npy").exists() and not done.exists()
    holder.release()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (lock_dir / ".lock").write_text(f'{{"pid": {gone.stdout.strip()}, "host": "{platform.node()}"}}')  # left behind
    Runner(out).run("s0-fit", argv, done, step_out)
    assert done.read_text() == "ok" and not (step_out / "partial.npy").exists() and not (lock_dir / ".lock").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_fit_stops_the_queued_ones(jobs):
    """The first failure surfaces at once: queued fits are not started (with 2 jobs the one
    already running finishes), results come back in order when nothing fails."""
    assert run_in_pool(lambda x: x * x, [3, 1, 2], jobs) == [9, 1, 4]
    started, second_running, release = [], threading.Event(), threading.Event()

    def fit(x):
        started.append(x)
        if x == 0:
            if jobs == 2:
                assert second_running.wait(10)
            raise SystemExit("experiment step 's0-fit' failed (exit 1)")
        second_running.set()
        release.wait(10)  # still running when the first fails
        return x

    timer = threading.Timer(0.5, release.set)
    timer.start()
    with pytest.raises(SystemExit, match="'s0-fit' failed"):
        run_in_pool(fit, list(range(6)), jobs)
    timer.cancel()
    assert sorted(started) == list(range(jobs))  # item 0, and with 2 jobs item 1; nothing queued ran
