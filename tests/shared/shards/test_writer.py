"""shared/shards/writer.py: the fast storage path (store_into / to_stored) gives exactly what numpy
gives; shard bytes are deterministic, the preallocated path writes what the list path writes, an
existing shard is refused, and written shards read back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shared.shards as shards
from shared import open_dataset
from shared.errors import DataError
from shared.hashing import sha256_path
from shardkit import random_samples
from shared.shards import ShardWriter, shard_relpath, store_into, to_stored, write_shard


def _f16_bits(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, np.float16)
    store_into(x, out)
    return out.view(np.uint16)


def test_float16_store_matches_numpy():
    """OpenCV's float32 -> float16 (used by the writer) == numpy's astype on [0, 1]: a stride over
    every float32 bit pattern in [0, 1], every float16 rounding midpoint and its float32 neighbours."""
    top = int(np.float32(1.0).view(np.uint32))
    bits = np.arange(0, top + 1, 61, dtype=np.uint32)
    h = np.arange(0, int(np.float16(1.0).view(np.uint16)) + 1, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)  # exact in float32
    mb = mid.view(np.uint32)
    edge = np.concatenate([mb - 1, mb, mb + 1]).view(np.float32)
    for x in (bits.view(np.float32), edge, np.array([0.0, 1.0, 1e-45, 6.1e-5], np.float32)):
        x2 = x.reshape(1, -1)
        np.testing.assert_array_equal(_f16_bits(x2), x2.astype(np.float16).view(np.uint16))
    # clipping and the sign of zero
    x = np.array([[-0.0, -1e-9, -3.0, 1.0000001, 7.0, 0.5]], np.float32)
    np.testing.assert_array_equal(to_stored(x), np.array([[0, 0, 0, 1, 1, 0.5]], np.float16))
    assert not np.signbit(to_stored(x)).any()
    # other dtypes keep numpy's path, float32 storage is a clip
    y = np.array([[0.1, 1.5, -2.0]], np.float64)
    np.testing.assert_array_equal(to_stored(y), np.clip(y, 0, 1).astype(np.float16))
    np.testing.assert_array_equal(to_stored(x, "float32"), np.clip(x, 0, 1))


def test_written_dataset_reads_back(tmp_path: Path):
    images = [np.random.default_rng(i).random((24, 30), dtype=np.float32) for i in range(4)]
    labels = [(im > 0.7).astype(np.uint8) for im in images]
    res = shards.write_shard(tmp_path / shards.shard_relpath(0, "zarr"), images, labels)
    from shared.manifest import write_dataset

    info = {"schema_version": 1, "kind": "synthesized", "class_names": ["background", "a"], "task": "single",
            "num_samples": 4, "image_dtype": "float16",
            "shards": [{"path": shards.shard_relpath(0, "zarr"), "start": 0, "count": 4, "sha256": res.sha256,
                        "bytes": res.bytes}]}
    write_dataset(tmp_path, info, [{"id": f"s{i:06d}", "shard": 0, "index": i} for i in range(4)])
    ds = open_dataset(tmp_path)
    for i in range(4):
        np.testing.assert_array_equal(ds[i]["image"], images[i].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(ds[i]["label"], labels[i])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_shard_bytes_deterministic(tmp_path: Path, fmt: str):
    images, labels = random_samples(6)
    a = write_shard(tmp_path / "a" / shard_relpath(0, fmt), images, labels, fmt=fmt)
    b = write_shard(tmp_path / "b" / shard_relpath(0, fmt), images, labels, fmt=fmt)
    assert a.sha256 == b.sha256 == sha256_path(a.path)
    assert a.bytes > 0 and a.count == 6


def test_writer_refuses_existing_and_cleans_tmp(tmp_path: Path):
    images, labels = random_samples(2)
    path = tmp_path / shard_relpath(0, "zarr")
    write_shard(path, images, labels)
    with pytest.raises(DataError, match="already exists"):
        write_shard(path, images, labels)
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / shard_relpath(1, "zarr")) as w:
            w.add(images[0], labels[0][:3])  # shape mismatch
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000.zarr"]


@pytest.mark.parametrize("shapes", [[(40, 48)] * 5, [(40, 48), (40, 48), (30, 20), (40, 48), (40, 48)]])
def test_capacity_buffer_same_bytes(tmp_path: Path, shapes):
    """The preallocated fast path (capacity) writes exactly what the list path writes."""
    images, labels = random_samples(len(shapes), shapes=shapes)
    images[1] = images[1].astype(np.float64) * 1.3 - 0.1  # clipping, other input dtype
    a = write_shard(tmp_path / "a" / shard_relpath(0, "zarr"), images, labels)
    with ShardWriter(tmp_path / "b" / shard_relpath(0, "zarr"), capacity=len(shapes)) as w:
        w.add_many(images, labels)
        b = w.close()
    assert a.sha256 == b.sha256 and a.sample_sha256 == b.sample_sha256
