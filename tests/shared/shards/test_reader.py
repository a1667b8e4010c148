"""Reading shards back: the direct Zarr shard reader (no zarr calls) gives exactly what zarr gives;
a dataset reads back sample by sample, by shard, by volume, padded and in float32; broken
datasets and corrupt chunks are one-line errors naming the shard and sample."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared import open_dataset
from shared.errors import DataError
from shared.hashing import sha256_array
from shardkit import labelled_dataset, make_dataset, random_shard_arrays
from shared.shards import ShardHandle, shard_relpath, to_stored, zarr_codec, zarr_format

N, H, W = 6, 40, 48
SELECTIONS = (slice(None), slice(1, 4), slice(None, None, 2), slice(4, None), 0, 3, -1)


def _arrays(dtype=np.float16, n=N, h=H, w=W, seed=0):
    return random_shard_arrays(n, h, w, dtype, seed)


def _assert_reads_like_zarr(path: Path, n: int, direct: bool = True) -> None:
    import zarr

    handle = ShardHandle(path, n)
    assert handle.direct is direct
    group = zarr.open_group(str(path), mode="r")
    for sel in SELECTIONS:
        ours = handle.read(sel)
        ref = (group["image"][sel], group["label"][sel], group["size"][sel])
        for a, b in zip(ours, ref):
            assert a.dtype == b.dtype and a.shape == b.shape, sel
            np.testing.assert_array_equal(a, b)
            assert a.tobytes() == b.tobytes()  # bit for bit (the sign of zero too)


@pytest.mark.parametrize("direct_writer", [True, False])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_direct_read_equals_zarr_on_both_writers(tmp_path: Path, direct_writer: bool, dtype):
    """Shards from the fast encoder and from zarr itself read back identically to zarr."""
    zarr_format.clear_metadata_cache()
    images, labels, sizes = _arrays(dtype)
    images[2, 0, 0] = -0.0
    path = tmp_path / "s.zarr"
    zarr_format.write_zarr_shard(path, images, labels, sizes, direct=direct_writer)
    _assert_reads_like_zarr(path, N)
    image, label, size = ShardHandle(path, N).read(slice(None))
    np.testing.assert_array_equal(image, images)
    np.testing.assert_array_equal(label, labels)
    np.testing.assert_array_equal(size, sizes)


def _plain_zarr(path: Path, variant: str) -> None:
    """A shard group written by zarr with codecs/options other than the writer's."""
    import zarr
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, TransposeCodec

    images, labels, sizes = _arrays(np.float32 if variant == "float32" else np.float16)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    comp = [] if variant == "raw" else [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
                                         if variant == "zstd" else BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
    if variant != "no-crc":
        comp.append(Crc32cCodec())
    if variant == "gzip":
        comp = [GzipCodec(level=1)]
    fill = 0.25 if variant == "fill" else 0
    kw: dict = dict(chunks=(1, H, W), shards=(N, H, W), compressors=comp)
    if variant == "index-start":
        kw = dict(chunks=(N, H, W), compressors=None,
                  serializer=ShardingCodec(chunk_shape=(1, H, W), codecs=[BytesCodec(), *comp], index_location="start"))
    if variant == "transpose":
        kw = dict(chunks=(N, H, W), compressors=None,
                  serializer=ShardingCodec(chunk_shape=(1, H, W), codecs=[TransposeCodec(order=(0, 2, 1)), BytesCodec(), *comp]))
    if variant == "two-per-chunk":
        kw = dict(chunks=(2, H, W), shards=(N, H, W), compressors=comp)
    if variant in ("missing", "fill"):  # chunks holding only the fill value are not stored
        images[1], labels[1] = fill, 3 if variant == "fill" else 0
    img = group.create_array("image", shape=images.shape, dtype=images.dtype, fill_value=fill, **kw)
    lbl = group.create_array("label", shape=labels.shape, dtype=np.uint8, fill_value=3 if variant == "fill" else 0, **kw)
    size = group.create_array("size", shape=sizes.shape, dtype=np.int32, chunks=sizes.shape, compressors=None, fill_value=0)
    img[...] = images
    lbl[...] = labels
    if variant != "missing":   # an unwritten size array reads as its fill value
        size[...] = sizes


@pytest.mark.parametrize("variant", ["index-start", "no-crc", "raw", "zstd", "float32", "missing", "fill"])
def test_direct_read_other_understood_layouts(tmp_path: Path, variant: str):
    path = tmp_path / "s.zarr"
    _plain_zarr(path, variant)
    if variant == "missing":
        index = np.frombuffer((path / "image" / "c" / "0" / "0" / "0").read_bytes()[-(N * 16 + 4):-4], "<u8")
        assert (index.reshape(N, 2)[1] == zarr_codec.INDEX_EMPTY).all() and not (path / "size" / "c").exists()
    _assert_reads_like_zarr(path, N)


@pytest.mark.parametrize("variant", ["gzip", "transpose", "two-per-chunk"])
def test_unknown_layouts_fall_back_to_zarr(tmp_path: Path, variant: str):
    path = tmp_path / "s.zarr"
    _plain_zarr(path, variant)
    _assert_reads_like_zarr(path, N, direct=False)


def test_corrupt_chunk_names_shard_and_sample(tmp_path: Path):
    ids = labelled_dataset(tmp_path, [(40, 48)] * 10)
    f = tmp_path / shard_relpath(1, "zarr") / "label" / "c" / "0" / "0" / "0"
    raw = f.read_bytes()
    index = np.frombuffer(raw[-(5 * 16 + 4):-4], "<u8").reshape(5, 2)
    damaged = bytearray(raw)
    damaged[int(index[2, 0]) + 20] ^= 0xFF       # inside chunk 2 = sample 7
    f.write_bytes(bytes(damaged))
    ds = open_dataset(tmp_path)
    assert ds.handle(1).direct
    with pytest.raises(DataError) as err:
        ds.shard_arrays(1)
    msg = str(err.value)
    assert "\n" not in msg and "shard-00001.zarr" in msg and f"label of sample {ids[7]}" in msg and "crc32c" in msg
    ds[5], ds[6], ds[8]  # the other samples of the shard still read on their own
    with pytest.raises(DataError, match=f"shard-00001.zarr.*sample {ids[7]}"):
        ds[7]
    # a damaged index, a truncated file
    damaged = bytearray(raw)
    damaged[-8] ^= 1
    f.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="shard-00001.zarr: cannot read shard data .label: shard index crc32c"):
        open_dataset(tmp_path).read_shard(1)
    f.write_bytes(raw[:50])
    with pytest.raises(DataError, match="shard-00001.zarr: cannot read shard data .label: file of 50 bytes"):
        open_dataset(tmp_path).read_shard(1)


def test_float16_to_float32_exact_for_every_value():
    """The OpenCV conversion in resize_image_into (x - 0.0) is numpy's cast for every float16."""
    import cv2

    from train.resize import resize_image_into

    every = np.arange(0, 1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    finite = np.isfinite(every)
    conv = cv2.subtract(every, 0.0, dtype=cv2.CV_32F)
    assert conv.dtype == np.float32
    np.testing.assert_array_equal(conv[finite].view(np.uint32), every[finite].astype(np.float32).view(np.uint32))
    # same size: a plain exact copy into the slot
    out = np.empty((256, 256), np.float32)
    resize_image_into(every, out)
    assert out[finite].view(np.uint32).tolist() == every[finite].astype(np.float32).view(np.uint32).tolist()


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_roundtrip(tmp_path: Path, fmt: str):
    images, labels, records = make_dataset(tmp_path, fmt)
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
    images, labels, _ = make_dataset(tmp_path, fmt, sizes=(4,), dtype="float32", shapes=shapes)
    ds = open_dataset(tmp_path)
    for i, shape in enumerate(shapes):
        s = ds[i]
        assert s["image"].shape == shape and s["label"].shape == shape
        np.testing.assert_array_equal(s["image"], images[i])  # float32 stored exactly
        np.testing.assert_array_equal(s["label"], labels[i])


def test_volumes(tmp_path: Path):
    vols = [{"id": "v1", "start": 0, "count": 4, "slices": [0, 1, 2, 3], "spacing": [1, 1, 1],
             "affine": np.eye(4).tolist(), "shape": [4, 40, 48]},
            {"id": "v2", "start": 4, "count": 6, "slices": list(range(6)), "spacing": [1, 1, 1],
             "affine": np.eye(4).tolist(), "shape": [6, 40, 48]}]
    images, labels, _ = make_dataset(tmp_path, "zarr", sizes=(3, 3, 4), dtype="float32", volumes=vols)
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
    make_dataset(tmp_path / "z", "zarr")
    make_dataset(tmp_path / "h", "hdf5")
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
    make_dataset(tmp_path / "c", "zarr")
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
