"""The fast storage paths of shared/shards/ (writer.store_into, the direct Zarr encoder) give exactly
what the plain numpy / zarr paths give."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shared.shards as shards
from shared import open_dataset
from shared.hashing import sha256_tree, tree_files
from shardkit import random_shard_arrays
from shared.shards import store_into, to_stored, zarr_codec, zarr_format


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


@pytest.mark.parametrize("n,h,w,dtype", [(5, 40, 48, np.float16), (3, 30, 20, np.float32), (1, 7, 9, np.float16),
                                         (40, 240, 240, np.float16)])
def test_direct_zarr_encoder_is_byte_identical(tmp_path: Path, n, h, w, dtype, monkeypatch):
    """The shard data encoded without zarr's pipeline is byte for byte what zarr writes itself."""
    images, labels, sizes = random_shard_arrays(n, h, w, dtype, seed=n)
    zarr_format.clear_metadata_cache()
    a, a2, b = tmp_path / "direct.zarr", tmp_path / "cached.zarr", tmp_path / "zarr.zarr"
    # image, label, size all go through the direct encoder (zarr writes only the metadata) ...
    monkeypatch.setattr(zarr_format, "_known_metadata", lambda *arrays: None)
    assert zarr_format.write_zarr_shard(a, images, labels, sizes, direct=True) == "direct"
    monkeypatch.undo()
    assert zarr_format.cached_layouts() == 1
    # ... then zarr.json comes from the cache, no zarr calls at all
    assert zarr_format.write_zarr_shard(a2, images, labels, sizes, direct=True) == "cached"
    assert zarr_format.write_zarr_shard(b, images, labels, sizes, direct=False) == "zarr"
    for x in (a, a2):
        assert [p.relative_to(x).as_posix() for p in tree_files(x)] == [p.relative_to(b).as_posix() for p in tree_files(b)]
        for px in tree_files(x):
            assert px.read_bytes() == (b / px.relative_to(x)).read_bytes(), px.relative_to(x)
        assert sha256_tree(x) == sha256_tree(b)
    import zarr

    g = zarr.open_group(str(a), mode="r", zarr_format=3)
    np.testing.assert_array_equal(g["image"][:], images)
    np.testing.assert_array_equal(g["label"][n - 1], labels[n - 1])  # one inner chunk on its own
    np.testing.assert_array_equal(g["size"][:], sizes)


@pytest.mark.parametrize("n,h,w,dtype", [(5, 40, 48, np.float16), (3, 30, 20, np.float32), (1, 7, 9, np.float16),
                                         (250, 512, 512, np.float32)])
def test_known_metadata_is_what_zarr_writes(tmp_path: Path, n, h, w, dtype):
    """With the zarr version it was checked against, a shard's zarr.json files are written without
    importing zarr; they are byte for byte zarr's, so whole shards are too."""
    if zarr_format._zarr_version() != zarr_format.METADATA_ZARR_VERSION:
        pytest.skip(f"zarr {zarr_format._zarr_version()} installed: its own metadata is used "
                    f"(the template is zarr {zarr_format.METADATA_ZARR_VERSION}'s)")
    images, labels, sizes = random_shard_arrays(n, h, w, dtype, seed=n)
    zarr_format.clear_metadata_cache()
    assert zarr_format.write_zarr_shard(tmp_path / "known.zarr", images, labels, sizes) == "cached"
    assert zarr_format.write_zarr_shard(tmp_path / "zarr.zarr", images, labels, sizes, direct=False) == "zarr"
    assert sha256_tree(tmp_path / "known.zarr") == sha256_tree(tmp_path / "zarr.zarr")
    for p in tree_files(tmp_path / "zarr.zarr"):
        assert (tmp_path / "known.zarr" / p.relative_to(tmp_path / "zarr.zarr")).read_bytes() == p.read_bytes()


def test_another_zarr_version_writes_its_own_metadata(tmp_path: Path, monkeypatch):
    images, labels, sizes = random_shard_arrays(3, 10, 12, np.float16, seed=1)
    zarr_format.clear_metadata_cache()
    monkeypatch.setattr(zarr_format, "_zarr_version", lambda: "9.9.9")
    assert zarr_format.write_zarr_shard(tmp_path / "a.zarr", images, labels, sizes) == "direct"


def test_unknown_layout_falls_back_to_zarr(tmp_path: Path, monkeypatch):
    """If zarr's metadata is not the layout the encoder knows (as with another zarr version's
    defaults), zarr writes the data itself, and the shard is the same."""
    images = np.random.default_rng(0).random((3, 10, 12)).astype(np.float16)
    labels = (images > 0.5).astype(np.uint8)
    sizes = np.full((3, 2), (10, 12), np.int32)
    zarr_format.clear_metadata_cache()
    monkeypatch.setattr(zarr_format, "_zarr_version", lambda: "9.9.9")  # another version: its own metadata
    monkeypatch.setattr(zarr_codec, "sharded_layout_matches", lambda *a: False)
    monkeypatch.setattr(zarr_codec, "plain_layout_matches", lambda *a: False)
    assert zarr_format.write_zarr_shard(tmp_path / "fallback.zarr", images, labels, sizes) == "zarr"
    assert zarr_format.cached_layouts() == 0  # nothing learnt from a layout the encoder does not know
    path = tmp_path / "shards" / "shard-00000.zarr"
    res = shards.write_shard(path, list(images), list(labels))
    monkeypatch.undo()
    ref = shards.write_shard(tmp_path / "ref" / "shard-00000.zarr", list(images), list(labels))
    assert res.sha256 == ref.sha256 == sha256_tree(tmp_path / "fallback.zarr")


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
