"""The direct Zarr shard reader (no zarr calls) and the in-place batch assembly give exactly what
zarr and the plain train.resize / train.prompts path give."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared import open_dataset
from shared.errors import DataError
from shared.manifest import write_dataset
from shardkit import random_shard_arrays
from shared.shards import ShardHandle, shard_relpath, write_shard, zarr_codec, zarr_format

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


def _dataset(root: Path, shapes, dtype="float16", fmt="zarr", shard_size=5) -> list[str]:
    rng = np.random.default_rng(1)
    images = [rng.random(s, dtype=np.float32) for s in shapes]
    labels = []
    for i, s in enumerate(shapes):
        lb = np.zeros(s, np.uint8)
        if i % 4:  # every 4th sample has no foreground
            lb[s[0] // 4: s[0] // 2, s[1] // 3: s[1] // 2] = 1 + i % 3
            lb[s[0] // 2 + 2: s[0] - 2, 2: s[1] // 4] = 1 + (i + 1) % 3
        labels.append(lb)
    entries, records = [], []
    for k, start in enumerate(range(0, len(shapes), shard_size)):
        rel = shard_relpath(k, fmt)
        res = write_shard(root / rel, images[start:start + shard_size], labels[start:start + shard_size],
                          fmt=fmt, image_dtype=dtype)
        entries.append({"path": rel, "start": start, "count": res.count, "sha256": res.sha256, "bytes": res.bytes})
        records += [{"id": f"s{start + j:06d}", "shard": k, "index": j} for j in range(res.count)]
    write_dataset(root, {"schema_version": 1, "kind": "synthesized", "class_names": ["background", "a", "b", "c"],
                         "task": "multi", "num_samples": len(shapes), "shards": entries, "image_dtype": dtype}, records)
    return [r["id"] for r in records]


def test_corrupt_chunk_names_shard_and_sample(tmp_path: Path):
    ids = _dataset(tmp_path, [(40, 48)] * 10)
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


def _reference_batch(stream, batch: int) -> dict:
    """make_batch as written before the in-place version: train.resize + train.prompts per sample."""
    from train.data import PROMPT_STREAM
    from train.prompts import sample_training_prompt
    from train.resize import resize_image, resize_label

    s = stream.spec
    pos = stream.positions(batch)
    epochs, indices = stream.order.samples_at(pos)
    images = np.empty((len(pos), 1, s.img_size, s.img_size), np.float32)
    targets = np.empty((len(pos), s.img_size, s.img_size), np.uint8)
    points = np.zeros((len(pos), 1, 2), np.float32)
    classes = np.zeros(len(pos), np.int64)
    for i, (epoch, index) in enumerate(zip(epochs.tolist(), indices.tolist())):
        sample = stream._sample(index)
        images[i, 0] = resize_image(sample["image"], s.img_size)
        label = resize_label(sample["label"], s.img_size)
        if s.prompt == "point":
            rng = np.random.default_rng([s.seed, epoch, index, PROMPT_STREAM])
            prompt = sample_training_prompt(label, rng)
            if prompt is None:
                targets[i] = 0
                points[i, 0] = rng.integers(0, s.img_size, 2)
            else:
                classes[i], points[i, 0], targets[i] = prompt[0], prompt[1], prompt[2]
        else:
            targets[i] = label
    return {"image": images, "target": targets, "points": points, "class_index": classes}


@pytest.mark.parametrize("dtype,prompt,img_size", [("float16", "point", 64), ("float32", "point", 48),
                                                   ("float16", "none", 64), ("float16", "point", 40)])
def test_in_place_batches_equal_reference(tmp_path: Path, dtype: str, prompt: str, img_size: int):
    from train.data import ShardBatchStream, StreamSpec

    shapes = [(40, 48), (40, 48), (33, 21), (40, 40), (40, 48), (17, 48), (40, 48), (40, 48), (25, 25), (40, 48),
              (40, 48), (40, 48)]
    _dataset(tmp_path, shapes, dtype=dtype)
    stream = ShardBatchStream(StreamSpec(shards=str(tmp_path), img_size=img_size, batch_size=4, seed=5, prompt=prompt))
    for batch in range(7):  # past the end of epoch 0
        got = stream.make_batch(batch)
        ref = _reference_batch(stream, batch)
        for key, value in ref.items():
            if key == "points" and prompt == "none":
                continue
            assert got[key].numpy().tobytes() == value.tobytes(), (batch, key)
        assert isinstance(got["image"], torch.Tensor)


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
