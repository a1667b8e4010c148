"""shared.arrays: the small mask helpers against their numpy definitions."""
from __future__ import annotations

import numpy as np

from shared.arrays import nonzero_box


def test_nonzero_box_is_the_span_of_nonzero_rows_and_columns():
    rng = np.random.default_rng(1)
    for _ in range(300):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random() * 0.05
        for m in (mask, mask.T, mask.astype(np.uint8) * 255):  # bool, non-contiguous, OpenCV's 0/255
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            want = None if rows.size == 0 else (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
            assert nonzero_box(m) == want
    assert nonzero_box(np.zeros((0, 3), bool)) is None
