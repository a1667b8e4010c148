"""synth/base/parallel.py: one process-pool helper; its results do not depend on the worker count."""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
import os
import threading
import time
from functools import partial
from typing import Callable

import pytest

from synth.base import parallel
from synth.base.parallel import Worker, map_tasks


def _scaled(worker: Worker, task: int) -> tuple[int, int, int]:
    """(task, task x the shared factor, pid); reports ``task`` units of progress."""
    worker.tick(task)
    return task, task * worker.state["factor"], os.getpid()


def _factor_state(factor: int) -> dict[str, int]:
    return {"factor": factor}


def _progress_sink() -> tuple[list[int], Callable[[int], None]]:
    seen: list[int] = []
    return seen, seen.append


@pytest.mark.parametrize("ordered", [True, False])
def test_one_and_two_workers_give_the_same_results(ordered: bool) -> None:
    tasks = list(range(1, 13))
    runs = {}
    for workers in (1, 2):
        seen, sink = _progress_sink()
        out = list(map_tasks(_scaled, tasks, workers=workers, state={"factor": 7}, ordered=ordered,
                             on_progress=sink))
        runs[workers] = out
        assert sum(seen) == sum(tasks)  # every tick reached the parent, none twice
    one, two = runs[1], runs[2]
    assert [(t, v) for t, v, _ in one] == [(t, 7 * t) for t in tasks]
    if ordered:
        assert [(t, v) for t, v, _ in two] == [(t, v) for t, v, _ in one]
    else:
        assert sorted((t, v) for t, v, _ in two) == [(t, v) for t, v, _ in one]
    assert {pid for *_, pid in one} == {os.getpid()}  # one worker: in this process
    assert os.getpid() not in {pid for *_, pid in two}  # two: in worker processes


def test_more_workers_than_tasks_and_no_tasks() -> None:
    assert [v for _, v, _ in map_tasks(_scaled, [3], workers=8, state={"factor": 2})] == [6]
    assert list(map_tasks(_scaled, [], workers=4, state={"factor": 2})) == []


def _fails_on_three(worker: Worker, task: int) -> int:
    if task == 3:
        raise ValueError(f"task {task} failed")
    return task


def test_a_worker_error_reaches_the_caller() -> None:
    for workers in (1, 2):
        with pytest.raises(ValueError, match="task 3 failed"):
            list(map_tasks(_fails_on_three, range(6), workers=workers))


def test_spawned_workers_rebuild_their_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under spawn (macOS, Windows) a state that must not be pickled is rebuilt by spawn_state."""
    monkeypatch.setattr(parallel, "context", lambda: mp.get_context("spawn"))
    out = list(map_tasks(_scaled, [1, 2, 3], workers=2, state={"factor": 0},  # never pickled
                         spawn_state=partial(_factor_state, 5)))
    assert [(t, v) for t, v, _ in out] == [(1, 5), (2, 10), (3, 15)]


def _big_result(_worker: Worker, task: int) -> bytes:
    return bytes([task]) * (4 << 20)  # megabytes per result, like a scan's pool candidates


def test_large_results_arrive_whole_and_in_order() -> None:
    out = list(map_tasks(_big_result, range(6), workers=2))
    assert [(len(b), b[0], b[-1]) for b in out] == [(4 << 20, t, t) for t in range(6)]


def _slow_negate(task: int) -> int:
    time.sleep(0.05)
    return -task


def _handler_cpu_seconds(pool_class) -> float:
    """CPU seconds the pool's worker-handler thread spends while 16 results of 32 MB each travel
    through the result pipe (Linux: /proc/self/task/<thread id>/stat, user + system)."""
    with pool_class(2, context=parallel.context()) as pool:
        handlers = [t for t in threading.enumerate() if t.name.endswith("(_handle_workers)")]
        if len(handlers) != 1 or not os.path.exists(f"/proc/self/task/{handlers[0].native_id}/stat"):
            pytest.skip("needs Linux /proc and CPython's named pool handler thread")
        stat = f"/proc/self/task/{handlers[0].native_id}/stat"

        def cpu() -> float:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        out = pool.map(_big_slice, range(16), chunksize=1)
        spent = cpu() - before
    assert [len(b) for b in out] == [32 << 20] * 16
    return spent


def _big_slice(task: int) -> bytes:
    return bytes([task]) * (32 << 20)


def test_the_worker_handler_does_not_spin_while_results_are_in_transit() -> None:
    """CPython's pool handler also waits on the result pipe and so spins while a result is in
    transit (synth/base/parallel.py, QuietPool); ours waits on the change notifier (and worker
    sentinels) only: measured on the handler thread, against the stock Pool on the same work."""
    quiet = _handler_cpu_seconds(parallel.QuietPool)
    stock = _handler_cpu_seconds(multiprocessing.pool.Pool)
    assert quiet < 0.2 and stock > quiet, (quiet, stock)


def test_quiet_pool_close_and_join_end_once_the_tasks_drain() -> None:
    """The handler polls every 0.1 s, so ``close(); join()`` still ends once the task cache drains."""
    with parallel.QuietPool(2, context=parallel.context()) as pool:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
        pending = pool.map_async(_slow_negate, range(8))  # still running when close() is called
        pool.close()
        pool.join()  # would hang if the handler never woke after the cache drained
        assert pending.get(timeout=5) == [-t for t in range(8)]
