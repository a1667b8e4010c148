"""One way to run tasks in worker processes: ``map_tasks(fn, tasks, workers=, state=)``.

Used by ``synth build`` (one task per shard), the volume scans of ``synth select`` / ``synth
build`` (one task per volume, :mod:`synth.selection.scanning`) and ``synth verify`` (one task per shard).

Worker state. A task function is called as ``fn(worker, task)``; ``worker.state`` is the
``state`` given to :func:`map_tasks` (a build's producer and bank, a scan's shared pool
threshold, the dataset being verified) and ``worker.tick(n)`` reports ``n`` units of progress to
the parent's ``on_progress``. Nothing is read from module globals by the caller's code:

- with one worker (or one task) everything runs in this process, ``state`` passed as is;
- with more, a pool of processes is started. Under ``fork`` (Linux) the state reaches each worker
  through the pool initializer's arguments, which a forked process inherits without pickling, so
  a bank of background slices is shared copy-on-write, not copied. Under ``spawn`` (macOS,
  Windows) it is pickled, or rebuilt in the worker by ``spawn_state()`` when given (for state
  that does not pickle, e.g. open shard files). The initializer stores it in
  :data:`_WORKER`, this module's one per-process slot, which only worker processes use.

Workers ignore Ctrl-C (the parent stops the pool and reports once) and die quietly on the
SIGTERM the pool sends when it is torn down. OpenCV runs one thread per process while tasks run
(one process per core already); the parent switches its own OpenCV to one thread *before* it
forks (a child that finds the parent's OpenCV worker threads gone would hang reconfiguring them)
and restores its setting afterwards. Results do not depend on the number of workers as long as
the task function depends only on its task and the state.
"""
from __future__ import annotations

import multiprocessing.pool
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Worker:
    """What a task function gets besides its task: the shared state and a progress callback."""

    state: Any
    tick: Callable[[int], None]


TaskFn = Callable[[Worker, Any], Any]


def context():
    """The multiprocessing context the pools use: ``fork`` where available, else ``spawn``.
    Shared values a task reads (``ctx.Value``) must come from this context."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread inside the block (one process per core already), as before after it."""
    try:
        import cv2
    except ImportError:
        yield
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def map_tasks(fn: TaskFn, tasks: Sequence[Any], *, workers: int, state: Any = None,
              spawn_state: Callable[[], Any] | None = None, ordered: bool = True,
              on_progress: Callable[[int], None] | None = None) -> Iterator[Any]:
    """``fn(worker, task)`` for every task on up to ``workers`` processes (a generator).

    ``ordered``: results in task order (else as they finish). ``on_progress(n)`` receives the
    workers' ``tick(n)`` calls (from a polling thread while a pool runs)."""
    tasks = list(tasks)
    workers = max(1, min(int(workers), len(tasks)))
    with opencv_single_threaded():
        if workers == 1:
            worker = Worker(state, on_progress or _ignore)
            for task in tasks:
                yield fn(worker, task)
            return
        ctx = context()
        forked = ctx.get_start_method() == "fork"
        counter = ctx.Value("q", 0) if on_progress is not None else None
        poller = _Poller(counter, on_progress) if counter is not None else None
        init_state = state if forked or spawn_state is None else None
        initargs = (fn, init_state, spawn_state, counter, not forked)
        try:
            with QuietPool(workers, initializer=_init_worker, initargs=initargs, context=ctx) as pool:
                run = pool.imap if ordered else pool.imap_unordered
                yield from run(_run_task, tasks)
        finally:
            if poller is not None:
                poller.stop()


def _ignore(_n: int) -> None:
    pass


class QuietPool(multiprocessing.pool.Pool):
    """``multiprocessing.Pool`` whose worker-handler thread does not spin while results are in transit.

    Since Python 3.8 (bpo-35493) the pool's worker handler sleeps in ``wait()`` on the workers'
    sentinels, a change notifier *and the result pipe*; it never reads that pipe, so from the first
    byte of a result until the result thread has read the last one, ``wait()`` returns at once and
    the thread loops. Scans send megabytes per volume (the pool candidates): with 2 workers on 2
    cores the loop took 1.45 s of CPU out of a 7.4 s image pass of 240 patients. Here it waits on
    the workers and the notifier only; the notifier is also what wakes it when the task cache
    drains after ``close()`` (``_PoolCache``), so nothing else needs the pipe."""

    def _get_sentinels(self) -> list:
        notifier = getattr(self, "_change_notifier", None)  # a private attribute (CPython 3.8-3.13)
        if notifier is None:  # another pool implementation: keep its own behaviour
            return super()._get_sentinels()
        return [notifier._reader]


class _Poller:
    """Forwards a shared counter's increments to ``on_progress`` every 0.2 s (and once at the end)."""

    def __init__(self, counter: Any, on_progress: Callable[[int], None]):
        self.counter, self.on_progress, self.seen = counter, on_progress, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        value = self.counter.value
        self.on_progress(value - self.seen)
        self.seen = value

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self._forward()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self._forward()


# --------------------------------------------------------------------------------------------
# Worker side

# The per-process slot: (task function, Worker) of the pool this process serves. Set only by the
# initializer, in worker processes; the parent never reads it.
_WORKER: dict[str, Any] = {}


def _init_worker(fn: TaskFn, state: Any, spawn_state: Callable[[], Any] | None, counter: Any,
                 fresh_process: bool) -> None:
    # Ctrl-C reaches every process of the group: the parent stops the pool and reports once;
    # workers die quietly (no traceback each) when the pool terminates them (SIGTERM, default).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if fresh_process:  # spawned: set OpenCV up here (a forked worker inherits the parent's one thread)
        import cv2

        cv2.setNumThreads(1)
    if state is None and spawn_state is not None:
        state = spawn_state()
    _WORKER["fn"] = fn
    _WORKER["worker"] = Worker(state, _counter_tick(counter) if counter is not None else _ignore)


def _counter_tick(counter: Any) -> Callable[[int], None]:
    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    return tick


def _run_task(task: Any) -> Any:
    return _WORKER["fn"](_WORKER["worker"], task)
