"""Allocator tuning for streaming scans: reuse freed memory instead of mapping it afresh.

A streaming scan allocates and frees volume-sized buffers once per volume (the inflated file, its
slice-first view's comparisons, the pickled results of a worker). glibc's malloc serves blocks
above its mmap threshold (128 kB, raised dynamically up to 32 MB) with fresh mappings and returns
them to the kernel on free, so every volume faults its buffers in again, page by page: on a
240-patient BraTS scan that was ~40 % of the image pass's time, spent in the kernel (BENCHMARKS.md,
issue 12). Within :func:`reusing_freed_memory` blocks up to ``limit`` come from malloc's heap and
up to ``limit`` of freed heap is kept for the next volume; on exit the heap is trimmed once.

Only glibc has ``mallopt``; elsewhere (macOS, musl) this does nothing. It changes no result, only
where memory comes from; the extra resident memory is at most ``limit`` per process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from typing import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT = 128 << 20  # measured: 64 MB still faulted most pages of a BraTS volume's buffers


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def reusing_freed_memory(limit: int = DEFAULT_LIMIT) -> Iterator[bool]:
    """Inside the block, malloc keeps freed blocks up to ``limit`` bytes for reuse (yields whether
    the C library allowed it). Processes forked inside inherit the setting. On exit the heap's
    free memory is given back once (``malloc_trim``); the thresholds stay: glibc has no call that
    restores its dynamic ones, and its fixed defaults (128 kB) would make every 240 x 240 float32
    frame of the synthesis that follows a fresh mapping (measured: 2-worker synthesis 5.3 -> 7.4 s)."""
    libc = _libc()
    ok = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)))
    try:
        yield ok
    finally:
        if libc is not None:
            libc.malloc_trim(0)
