"""synth/selection/background_pool.py: the seeded pool sample (streaming == offline)."""
from __future__ import annotations

import numpy as np

from synth.selection.background_pool import PoolSampler, pool_key, sample_pool


def test_streaming_sampler_equals_sample_pool_in_any_order():
    pool = [{"volume": f"case{v:03d}", "slice": k} for v in range(40) for k in range(0, 60, 3)]
    for size in (1, 37, 500, len(pool), len(pool) + 5):
        expected = sample_pool(pool, size, seed=7)
        assert len(expected) == min(size, len(pool))
        assert expected == [e for e in pool if e in expected]  # (volume, slice) order kept
        for order in (pool, pool[::-1], list(np.random.default_rng(1).permutation(pool))):
            sampler = PoolSampler(size)
            for e in order:
                key = pool_key(7, e["volume"], e["slice"])
                if key <= sampler.threshold:
                    sampler.offer(key, e["volume"], e["slice"], None)
            assert sorted(sampler.items()) == [(e["volume"], e["slice"]) for e in expected]
    assert sample_pool(pool, None, 0) == pool and sample_pool(pool, 0, 0) == pool
    assert sample_pool(pool, 10, 1) != sample_pool(pool, 10, 2)


def test_pool_cap_follows_the_qualifying_fraction():
    from synth.selection.background_pool import PoolCap

    keys = list(range(1000, 0, -1))  # any order: the cap sorts them
    cap = PoolCap(100, keys, margin=0.2, min_seen=0.05)
    assert cap.value == (1 << 64) - 1  # nothing seen yet: no cap
    cap.observe(40, 20)
    assert cap.value == (1 << 64) - 1  # 40 < 5 % of 1000
    cap.observe(60, 30)  # 100 free seen, half qualify: rank 100 * 1.2 / 0.5 = 240
    assert cap.value == 241  # sorted keys 1..1000: rank 240 is key 241
    cap.observe(100, 0)  # a quarter qualify: rank 480
    assert cap.value == 481
    assert PoolCap(100, keys[:150]).value == (1 << 64) - 1 and PoolCap(None, keys).value == (1 << 64) - 1
    small = PoolCap(900, keys)
    small.observe(500, 400)  # rank 900 * 1.2 / 0.8 = 1350 >= 1000 keys: no cap
    assert small.value == (1 << 64) - 1


def test_sampler_items_are_in_slice_order_whatever_the_offer_order():
    a, b = PoolSampler(3), PoolSampler(3)
    offers = [(5, "v2", 1), (9, "v1", 4), (1, "v1", 7), (7, "v3", 0), (3, "v1", 2)]
    for key, v, k in offers:
        a.offer(key, v, k, f"{v}:{k}")
    for key, v, k in reversed(offers):
        b.offer(key, v, k, None if k == 2 else f"{v}:{k}")
    assert list(a.items()) == list(b.items()) == [("v1", 2), ("v1", 7), ("v2", 1)]
    assert b.items()[("v1", 2)] is None  # a deferred place keeps its rank in the sample
