"""shared/shards/zarr_format.py: the direct Zarr encoder and the zarr.json template give exactly the
shard zarr writes itself, and with another zarr version (or a layout the encoder does not know)
zarr writes what it must."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shared.shards as shards
from shared.hashing import sha256_tree, tree_files
from shardkit import random_shard_arrays
from shared.shards import zarr_codec, zarr_format


@pytest.mark.parametrize("n,h,w,dtype", [(5, 40, 48, np.float16), (3, 30, 20, np.float32), (1, 7, 9, np.float16),
                                         (40, 240, 240, np.float16)])
def test_direct_zarr_encoder_is_byte_identical(tmp_path: Path, n, h, w, dtype, monkeypatch):
    """The shard data encoded without zarr's pipeline is byte for byte what zarr writes itself."""
    images, labels, sizes = random_shard_arrays(n, h, w, dtype, seed=n)
    zarr_format.clear_metadata_cache()
    a, a2, b = tmp_path / "direct.zarr", tmp_path / "cached.zarr", tmp_path / "zarr.zarr"
    # image, label, size all go through the direct encoder (zarr writes only the metadata) ...
    monkeypatch.setattr(zarr_format, "installed_zarr_version", lambda: "9.9.9")  # no template
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
    if zarr_format.installed_zarr_version() != zarr_format.METADATA_ZARR_VERSION:
        pytest.skip(f"zarr {zarr_format.installed_zarr_version()} installed: its own metadata is used "
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
    monkeypatch.setattr(zarr_format, "installed_zarr_version", lambda: "9.9.9")
    assert zarr_format.write_zarr_shard(tmp_path / "a.zarr", images, labels, sizes) == "direct"


def test_unknown_layout_falls_back_to_zarr(tmp_path: Path, monkeypatch):
    """If zarr's metadata is not the layout the encoder knows (as with another zarr version's
    defaults), zarr writes the data itself, and the shard is the same."""
    images = np.random.default_rng(0).random((3, 10, 12)).astype(np.float16)
    labels = (images > 0.5).astype(np.uint8)
    sizes = np.full((3, 2), (10, 12), np.int32)
    zarr_format.clear_metadata_cache()
    monkeypatch.setattr(zarr_format, "installed_zarr_version", lambda: "9.9.9")  # another version: its own metadata
    monkeypatch.setattr(zarr_codec, "sharded_layout_matches", lambda *a: False)
    monkeypatch.setattr(zarr_codec, "plain_layout_matches", lambda *a: False)
    assert zarr_format.write_zarr_shard(tmp_path / "fallback.zarr", images, labels, sizes) == "zarr"
    assert zarr_format.cached_layouts() == 0  # nothing learnt from a layout the encoder does not know
    path = tmp_path / "shards" / "shard-00000.zarr"
    res = shards.write_shard(path, list(images), list(labels))
    monkeypatch.undo()
    ref = shards.write_shard(tmp_path / "ref" / "shard-00000.zarr", list(images), list(labels))
    assert res.sha256 == ref.sha256 == sha256_tree(tmp_path / "fallback.zarr")
