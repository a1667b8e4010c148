"""shared.shards.zarr_codec on its own: what it encodes is what zarr writes, what it decodes is what
zarr reads, it says no to layouts it does not know, and a damaged chunk is a ChunkError naming it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from shared.shards import zarr_codec
from shared.shards.zarr_codec import (IMAGE_BLOSC, INDEX_EMPTY, LABEL_BLOSC, ChunkError, DirectArray,
                                      direct_array, encode_plain, encode_sharded, open_direct_arrays,
                                      plain_layout_matches, sharded_layout_matches)

N, H, W = 4, 12, 10


def _zarr_sharded(folder: Path, data: np.ndarray, blosc: dict) -> dict:
    """``data`` written by zarr itself in the shard layout; returns its metadata (zarr.json)."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    n, h, w = data.shape
    arr = zarr.create_array(str(folder), shape=data.shape, dtype=data.dtype, chunks=(1, h, w), shards=(n, h, w),
                            compressors=[BloscCodec(**blosc), Crc32cCodec()], fill_value=0,
                            config={"write_empty_chunks": True}, zarr_format=3)
    arr[...] = data
    return json.loads((folder / "zarr.json").read_bytes())


def _data(dtype=np.float16) -> np.ndarray:
    data = np.random.default_rng(3).random((N, H, W)).astype(dtype)
    data[1] = 0  # an all-zero sample is still stored (write_empty_chunks)
    return data


@pytest.mark.parametrize("dtype,blosc", [(np.float16, IMAGE_BLOSC), (np.float32, IMAGE_BLOSC),
                                         (np.uint8, LABEL_BLOSC)])
def test_encode_sharded_is_what_zarr_writes(tmp_path: Path, dtype, blosc):
    data = _data(dtype) if dtype != np.uint8 else (_data() > 0.6).astype(np.uint8)
    meta = _zarr_sharded(tmp_path / "zarr", data, blosc)
    assert sharded_layout_matches(meta, data, blosc)
    encode_sharded(tmp_path / "ours", data, blosc)
    shard_file = Path("c", "0", "0", "0")
    assert (tmp_path / "ours" / shard_file).read_bytes() == (tmp_path / "zarr" / shard_file).read_bytes()
    # and it decodes back, one sample or several at once
    arr = direct_array(tmp_path / "ours", "image", meta)
    assert arr is not None and arr.sharded and arr.blosc and arr.crc and arr.index_crc and arr.index_at_end
    np.testing.assert_array_equal(arr.read(np.arange(N, dtype=np.int64)), data)
    np.testing.assert_array_equal(arr.read(np.array([2], np.int64))[0], data[2])


def test_encode_plain_is_what_zarr_writes(tmp_path: Path):
    import zarr

    sizes = np.array([[12, 10], [11, 9]], np.int32)
    arr = zarr.create_array(str(tmp_path / "zarr"), shape=sizes.shape, dtype=sizes.dtype, chunks=sizes.shape,
                            compressors=None, fill_value=0, zarr_format=3)
    arr[...] = sizes
    meta = json.loads((tmp_path / "zarr" / "zarr.json").read_bytes())
    assert plain_layout_matches(meta, sizes)
    assert not plain_layout_matches(meta, np.zeros_like(sizes))  # zarr stores no all-fill-value chunk
    encode_plain(tmp_path / "ours", sizes)
    assert (tmp_path / "ours" / "c" / "0" / "0").read_bytes() == (tmp_path / "zarr" / "c" / "0" / "0").read_bytes()
    direct = direct_array(tmp_path / "ours", "size", meta)
    assert direct is not None and not direct.sharded
    np.testing.assert_array_equal(direct.read(np.array([1, 0], np.int64)), sizes[[1, 0]])


def test_layouts_the_encoder_does_not_know_are_refused(tmp_path: Path):
    data = _data()
    meta = _zarr_sharded(tmp_path / "zarr", data, IMAGE_BLOSC)
    assert not sharded_layout_matches(meta, data, LABEL_BLOSC)              # other Blosc settings
    assert not sharded_layout_matches(meta, data[:, :, :-1], IMAGE_BLOSC)   # other shape
    assert not sharded_layout_matches(meta, np.asfortranarray(data), IMAGE_BLOSC)
    assert not sharded_layout_matches(meta, data.astype(">f2"), IMAGE_BLOSC)
    other_keys = {**meta, "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}}}
    assert not sharded_layout_matches(other_keys, data, IMAGE_BLOSC)
    index_first = copy.deepcopy(meta)
    index_first["codecs"][0]["configuration"]["index_location"] = "start"
    assert not sharded_layout_matches(index_first, data, IMAGE_BLOSC)
    # ... but the decoder reads that one (zarr could have written it)
    assert direct_array(tmp_path / "zarr", "image", index_first).index_at_end is False
    for unknown in ({**meta, "data_type": "float64"}, {**meta, "storage_transformers": [{"name": "x"}]},
                    {**meta, "fill_value": "NaN"}, {**meta, "codecs": [{"name": "gzip"}]}):
        assert direct_array(tmp_path / "zarr", "image", unknown) is None


def test_open_direct_arrays_needs_a_v3_group(tmp_path: Path):
    data = _data()
    _zarr_sharded(tmp_path / "g" / "image", data, IMAGE_BLOSC)
    assert open_direct_arrays(tmp_path / "g", ("image",)) is None  # no group zarr.json
    (tmp_path / "g" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    arrays = open_direct_arrays(tmp_path / "g", ("image",))
    assert arrays is not None and isinstance(arrays["image"], DirectArray)
    assert open_direct_arrays(tmp_path / "g", ("image", "label")) is None  # an array it lacks


def _sharded_array(folder: Path, data: np.ndarray) -> DirectArray:
    encode_sharded(folder, data, IMAGE_BLOSC)
    return DirectArray("image", folder / "c" / "0" / "0" / "0", data.shape, data.dtype, 0.0, sharded=True,
                       blosc=True, crc=True, index_crc=True)


def test_damaged_chunks_are_chunk_errors_naming_the_sample(tmp_path: Path):
    data = _data()
    arr = _sharded_array(tmp_path / "a", data)
    raw = arr.file.read_bytes()
    index = np.frombuffer(raw[-(N * 16 + 4):-4], "<u8").reshape(N, 2)
    damaged = bytearray(raw)
    damaged[int(index[2, 0]) + 20] ^= 0xFF
    arr.file.write_bytes(bytes(damaged))
    with pytest.raises(ChunkError) as err:
        arr.read(np.arange(N, dtype=np.int64))
    assert (err.value.array, err.value.row, err.value.problem) == ("image", 2, "crc32c checksum mismatch")
    np.testing.assert_array_equal(arr.read(np.array([0, 3], np.int64)), data[[0, 3]])  # the others still read
    damaged[-2] ^= 1   # the index checksum
    arr.file.write_bytes(bytes(damaged))
    with pytest.raises(ChunkError, match="shard index crc32c") as err:
        arr.read(np.array([0], np.int64))
    assert err.value.row is None
    arr.file.write_bytes(raw[:30])
    with pytest.raises(ChunkError, match="too short for the shard index"):
        arr.read(np.array([0], np.int64))


def test_chunks_not_stored_read_as_the_fill_value(tmp_path: Path):
    data = _data()
    arr = _sharded_array(tmp_path / "a", data)
    raw = bytearray(arr.file.read_bytes())
    index = np.frombuffer(bytes(raw[-(N * 16 + 4):-4]), "<u8").reshape(N, 2).copy()
    index[1] = INDEX_EMPTY
    import google_crc32c

    raw[-(N * 16 + 4):] = index.tobytes() + google_crc32c.value(index.tobytes()).to_bytes(4, "little")
    arr.file.write_bytes(bytes(raw))
    filled = DirectArray(**{**arr.__dict__, "fill": 0.5})
    out = filled.read(np.arange(N, dtype=np.int64))
    assert (out[1] == 0.5).all()
    np.testing.assert_array_equal(out[[0, 2, 3]], data[[0, 2, 3]])
    arr.file.unlink()   # no shard file at all: every sample is the fill value
    assert (filled.read(np.array([0, 3], np.int64)) == 0.5).all()


def test_module_needs_no_zarr():
    """The codec is the loader workers' read path: it must not import zarr."""
    import subprocess
    import sys

    code = ("import sys, shared.shards.zarr_codec as c; assert 'zarr' not in sys.modules, 'zarr imported'; "
            "print(c.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(zarr_codec.__file__).parents[2])
    assert out.returncode == 0, out.stderr
