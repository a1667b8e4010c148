"""shared/shards/formats.py: the format table and the suffixes of the layout name the same formats,
and each row's writer and reader agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardkit import random_samples
from shared.shards import FORMATS, SHARD_FORMATS, ShardHandle, ShardWriter, shard_relpath, to_stored, write_shard


def test_every_format_in_the_table_has_a_suffix_and_round_trips(tmp_path: Path):
    """The format table (shared.shards.FORMATS) and the suffixes of the layout name the same
    formats; each row's writer and reader agree through ShardHandle."""
    assert tuple(FORMATS) == SHARD_FORMATS
    images, labels = random_samples(3, shapes=[(40, 48), (33, 48), (40, 21)])
    for fmt in FORMATS:
        path = tmp_path / shard_relpath(0, fmt)
        write_shard(path, images, labels, fmt=fmt)
        handle = ShardHandle(path, 3)
        stored_images, stored_labels, sizes = handle.read(slice(None))
        assert sizes.tolist() == [[40, 48], [33, 48], [40, 21]]
        np.testing.assert_array_equal(stored_images[1, :33], to_stored(images[1]))
        np.testing.assert_array_equal(handle.read_labels()[0], stored_labels)
        handle.close()
    with pytest.raises(ValueError, match="unknown shard format 'npz'"):
        ShardWriter(tmp_path / "x.npz", fmt="npz")
