"""Shard arrays for the writer/reader tests: random images with a border, labels at two levels,
an all-background first sample and a smaller last one."""
from __future__ import annotations

import numpy as np


def random_shard_arrays(n: int, h: int, w: int, dtype=np.float16, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, h, w), dtype)
    images[:, 2:h - 3, 3:w - 2] = rng.random((n, h - 5, w - 5)).astype(dtype)
    labels = (images > 0.8).astype(np.uint8) + (images > 0.95)
    labels[0] = 0  # an all-background chunk
    sizes = np.full((n, 2), (h, w), np.int32)
    sizes[-1] = (h - 1, w - 2)
    return images, labels, sizes
