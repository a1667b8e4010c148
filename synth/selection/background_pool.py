"""The background pool at scale: a seeded sample of the eligible slices (their exact compact
storage is :mod:`synth.base.slice_store`).

Every slice gets a key, a 64-bit number from sha256 of (seed, volume, slice): it depends
on nothing else, so the sample is known from the labels alone (a slice with foreground never
enters the pool) and does not depend on reading order or worker count. When more slices are
eligible than ``pool_size``, the pool is the ``pool_size`` eligible slices with the smallest keys,
i.e. a uniform random sample without replacement, listed in (volume, slice) order like the full
pool. A streaming scan keeps it with :class:`PoolSampler`, a bounded heap: each volume is read
once and only the slices that can still make the sample are kept (memory ~ ``pool_size`` slices,
whatever the number of patients).
"""
from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


# Default --pool-size, chosen by measurement (BENCHMARKS.md, "Scaling to the full BraTS release"):
# a pooled 240x240 BraTS slice costs ~0.04 MB of peak memory (its exact compact copy cropped to its
# nonzero box, ~0.027 MB, plus its cached content mask in each synthesis worker; ~0.2 MB before the
# crop); 4096 keeps a 240-patient build at ~0.35 GB with one worker and ~0.5 GB PSS with two, bounds
# it whatever the cohort, and is larger than the pools of the sample cohorts (4 cases: 185 slices,
# the 30-case cohort's train split: 1,246), which therefore keep their full pools and bytes.
DEFAULT_POOL_SIZE = 4096
_NO_LIMIT = (1 << 64) - 1


def pool_key(seed: int, volume: str, k: int) -> int:
    """The slice's sampling key: uniform 64-bit, from (seed, volume, slice) only."""
    digest = hashlib.sha256(f"pool/{int(seed)}/{volume}/{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def sample_pool(pool: Sequence[dict[str, Any]], pool_size: int | None, seed: int) -> list[dict[str, Any]]:
    """The ``pool_size`` entries with the smallest keys, in their given order (all when it fits)."""
    if not pool_size or len(pool) <= pool_size:
        return list(pool)
    ranked = sorted(range(len(pool)), key=lambda i: (pool_key(seed, pool[i]["volume"], pool[i]["slice"]),
                                                     pool[i]["volume"], int(pool[i]["slice"])))
    keep = set(ranked[:pool_size])
    return [e for i, e in enumerate(pool) if i in keep]


class PoolSampler:
    """Bounded heap of the ``pool_size`` smallest-key candidates seen so far (streaming scans).

    ``threshold`` is the largest key that can still enter: a worker skips (never decodes into the
    bank) any slice above it. It only decreases, so a stale value read by a worker is safe.
    """

    def __init__(self, pool_size: int | None):
        self.pool_size = pool_size or 0
        self._heap: list[tuple[int, str, int, Any]] = []  # (-key, negated order...) max-heap by key

    @property
    def threshold(self) -> int:
        if not self.pool_size or len(self._heap) < self.pool_size:
            return _NO_LIMIT
        return -self._heap[0][0]

    def offer(self, key: int, volume: str, k: int, item: Any) -> None:
        # max-heap on (key, volume, slice): the root is the entry to evict first
        entry = (-key, _Neg(volume), -int(k), item)
        if not self.pool_size or len(self._heap) < self.pool_size:
            heapq.heappush(self._heap, entry)
        elif entry[:3] > self._heap[0][:3]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> dict[tuple[str, int], Any]:
        """The sample, in (volume, slice) order (whatever order the candidates came in)."""
        return dict(sorted(((neg.value, -negk), item) for _key, neg, negk, item in self._heap))


class PoolCap:
    """An early bound on the keys worth reading into the pool sample, from what the scan has seen.

    The sampler's threshold is exact but loose until its heap is full (at 41 % of the 240-patient
    cohort) and shrinks slowly after, so a scan encoded and sent ~1.9x the pool size in candidates.
    Keys are uniform and independent of the content, so if a fraction ``q`` of the foreground-free
    slices qualifies, the sample's threshold is near the free slices' key of rank ``pool / q``.
    The cap is that key with a ``margin``, once ``min_seen`` of the free slices have been seen
    (before: no cap). It only decides what is read early: a worker sends a qualifying slice whose
    key is above ``min(threshold, cap)`` as its key alone (deferred), the sampler keeps a place
    for it, and a deferred slice that makes the final sample is read again at the end. So the
    sample is exact whatever the cap. Measured on the 240-patient cohort (simulated on its keys
    and contents, then in builds): candidates encoded and sent 7,785 -> ~5,100, no volume read
    again, in case order and in random orders (BENCHMARKS.md, "Scaling")."""

    def __init__(self, pool_size: int | None, free_keys: Sequence[int], *, margin: float = 0.2,
                 min_seen: float = 0.05):
        self.pool_size = pool_size or 0
        self.keys = np.sort(np.asarray(free_keys, dtype=np.uint64))
        self.margin, self.min_seen = margin, min_seen
        self.free_seen = self.qualifying_seen = 0

    def observe(self, free: int, qualifying: int) -> None:
        """One more volume: its foreground-free slices and how many of them qualified."""
        self.free_seen += int(free)
        self.qualifying_seen += int(qualifying)

    @property
    def value(self) -> int:
        n = len(self.keys)
        if not self.pool_size or not n or self.free_seen < self.min_seen * n or not self.qualifying_seen:
            return _NO_LIMIT
        rank = math.ceil(self.pool_size * (1 + self.margin) * self.free_seen / self.qualifying_seen)
        return _NO_LIMIT if rank >= n else int(self.keys[rank])


@dataclass(frozen=True)
class _Neg:
    """Orders strings in reverse (for the max-heap tie-break on volume ids)."""

    value: str

    def __lt__(self, other: "_Neg") -> bool:
        return self.value > other.value

    def __gt__(self, other: "_Neg") -> bool:
        return self.value < other.value
