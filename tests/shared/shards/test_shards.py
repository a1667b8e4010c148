"""The shard format on its own: write, read back, hashes, determinism, broken shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared import open_dataset
from shared.errors import DataError
from shared.hashing import sha256_array, sha256_path
from shared.manifest import write_dataset
from shared.shards import (FORMATS, SHARD_FORMATS, ShardHandle, ShardWriter, shard_relpath, to_stored,
                           write_shard)


def _samples(n: int, seed: int = 0, shapes=None):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        h, w = shapes[i] if shapes else (40, 48)
        images.append(rng.random((h, w), dtype=np.float32))
        labels.append(rng.integers(0, 4, (h, w), dtype=np.uint8))
    return images, labels


def _make_dataset(root: Path, fmt: str, sizes=(5, 5, 3), dtype="float16", shapes=None, volumes=None):
    total = sum(sizes)
    images, labels = _samples(total, shapes=shapes)
    shards, records, start = [], [], 0
    for k, n in enumerate(sizes):
        res = write_shard(root / shard_relpath(k, fmt), images[start:start + n], labels[start:start + n],
                          fmt=fmt, image_dtype=dtype)
        shards.append({"path": shard_relpath(k, fmt), "start": start, "count": n, "sha256": res.sha256,
                       "bytes": res.bytes})
        for j, h in enumerate(res.sample_sha256):
            records.append({"id": f"s{start + j:06d}", "shard": k, "index": j, "sha256": h})
        start += n
    info = {"schema_version": 1, "kind": "synthesized", "class_names": ["background", "a", "b", "c"],
            "task": "multi", "num_samples": total, "shards": shards, "image_dtype": dtype}
    if volumes:
        info["volumes"] = volumes
    write_dataset(root, info, records)
    return images, labels, records


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_roundtrip(tmp_path: Path, fmt: str):
    images, labels, records = _make_dataset(tmp_path, fmt)
    ds = open_dataset(tmp_path)
    assert len(ds) == 13 and ds.num_shards == 3 and ds.shard_range(2) == (10, 3)
    assert ds.class_names == ("background", "a", "b", "c") and ds.task == "multi" and ds.format == fmt
    for i in (0, 4, 5, 12, -1):
        s = ds[i]
        ii = i % 13
        assert s["id"] == f"s{ii:06d}"
        assert s["image"].dtype == np.float32 and s["label"].dtype == np.uint8
        assert s["image"].shape == (40, 48)
        np.testing.assert_array_equal(s["image"], images[ii].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(s["label"], labels[ii])
        assert sha256_array(to_stored(images[ii])) == records[ii]["sha256"]["image"]
    bulk = ds.read_shard(1)
    assert [b["id"] for b in bulk] == [f"s{i:06d}" for i in range(5, 10)]
    for b in bulk:
        single = ds[b["index"]]
        np.testing.assert_array_equal(b["image"], single["image"])
        np.testing.assert_array_equal(b["label"], single["label"])
    assert [s["id"] for s in ds] == [f"s{i:06d}" for i in range(13)]
    with pytest.raises(IndexError):
        ds[13]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_padding_and_float32(tmp_path: Path, fmt: str):
    shapes = [(30, 20), (40, 48), (10, 60), (40, 48)]
    images, labels, _ = _make_dataset(tmp_path, fmt, sizes=(4,), dtype="float32", shapes=shapes)
    ds = open_dataset(tmp_path)
    for i, shape in enumerate(shapes):
        s = ds[i]
        assert s["image"].shape == shape and s["label"].shape == shape
        np.testing.assert_array_equal(s["image"], images[i])  # float32 stored exactly
        np.testing.assert_array_equal(s["label"], labels[i])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_shard_bytes_deterministic(tmp_path: Path, fmt: str):
    images, labels = _samples(6)
    a = write_shard(tmp_path / "a" / shard_relpath(0, fmt), images, labels, fmt=fmt)
    b = write_shard(tmp_path / "b" / shard_relpath(0, fmt), images, labels, fmt=fmt)
    assert a.sha256 == b.sha256 == sha256_path(a.path)
    assert a.bytes > 0 and a.count == 6


def test_writer_refuses_existing_and_cleans_tmp(tmp_path: Path):
    images, labels = _samples(2)
    path = tmp_path / shard_relpath(0, "zarr")
    write_shard(path, images, labels)
    with pytest.raises(DataError, match="already exists"):
        write_shard(path, images, labels)
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path / shard_relpath(1, "zarr")) as w:
            w.add(images[0], labels[0][:3])  # shape mismatch
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000.zarr"]


def test_every_format_in_the_table_has_a_suffix_and_round_trips(tmp_path: Path):
    """The format table (shared.shards.FORMATS) and the suffixes of the layout name the same
    formats; each row's writer and reader agree through ShardHandle."""
    assert tuple(FORMATS) == SHARD_FORMATS
    images, labels = _samples(3, shapes=[(40, 48), (33, 48), (40, 21)])
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


def test_volumes(tmp_path: Path):
    vols = [{"id": "v1", "start": 0, "count": 4, "slices": [0, 1, 2, 3], "spacing": [1, 1, 1],
             "affine": np.eye(4).tolist(), "shape": [4, 40, 48]},
            {"id": "v2", "start": 4, "count": 6, "slices": list(range(6)), "spacing": [1, 1, 1],
             "affine": np.eye(4).tolist(), "shape": [6, 40, 48]}]
    images, labels, _ = _make_dataset(tmp_path, "zarr", sizes=(3, 3, 4), dtype="float32", volumes=vols)
    ds = open_dataset(tmp_path)
    img, lbl = ds.volume_arrays("v2")  # spans shards 1 and 2
    assert img.shape == (6, 40, 48) and img.dtype == np.float32
    np.testing.assert_array_equal(img, np.stack(images[4:10]))
    np.testing.assert_array_equal(lbl, np.stack(labels[4:10]))
    assert ds.volume_arrays(0)[0].shape == (4, 40, 48)


def test_broken_datasets(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="dataset.json: missing"):
        open_dataset(tmp_path)
    _make_dataset(tmp_path / "z", "zarr")
    _make_dataset(tmp_path / "h", "hdf5")
    # missing shard
    import shutil

    shutil.rmtree(tmp_path / "z" / shard_relpath(1, "zarr"))
    with pytest.raises(DataError, match="shard-00001.zarr: shard missing"):
        open_dataset(tmp_path / "z")
    # empty / truncated HDF5 shard
    (tmp_path / "h" / shard_relpath(0, "hdf5")).write_bytes(b"")
    with pytest.raises(DataError, match="shard-00000.h5: shard file is empty"):
        open_dataset(tmp_path / "h")
    p = tmp_path / "h" / shard_relpath(1, "hdf5")
    p.write_bytes(p.read_bytes()[:100])
    ds = open_dataset(tmp_path / "h", check_files=False)
    with pytest.raises(DataError, match="shard-00001.h5: cannot open shard"):
        ds[6]
    # corrupt zarr chunk data (the image shard file)
    _make_dataset(tmp_path / "c", "zarr")
    f = tmp_path / "c" / shard_relpath(0, "zarr") / "image" / "c" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[20:400] = b"\xff" * 380
    f.write_bytes(bytes(data))
    ds = open_dataset(tmp_path / "c")
    with pytest.raises(DataError, match="shard-00000.zarr"):
        ds.read_shard(0)
    # bad dataset.json
    (tmp_path / "c" / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        open_dataset(tmp_path / "c")
    info = {"shards": [{"path": "shards/shard-00000.zarr", "start": 0, "count": 5}], "num_samples": 7,
            "class_names": ["background"]}
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="num_samples"):
        open_dataset(tmp_path / "c")


@pytest.mark.parametrize("shapes", [[(40, 48)] * 5, [(40, 48), (40, 48), (30, 20), (40, 48), (40, 48)]])
def test_capacity_buffer_same_bytes(tmp_path: Path, shapes):
    """The preallocated fast path (capacity) writes exactly what the list path writes."""
    images, labels = _samples(len(shapes), shapes=shapes)
    images[1] = images[1].astype(np.float64) * 1.3 - 0.1  # clipping, other input dtype
    a = write_shard(tmp_path / "a" / shard_relpath(0, "zarr"), images, labels)
    with ShardWriter(tmp_path / "b" / shard_relpath(0, "zarr"), capacity=len(shapes)) as w:
        w.add_many(images, labels)
        b = w.close()
    assert a.sha256 == b.sha256 and a.sample_sha256 == b.sample_sha256
