"""The shard format shared by `synth` (writer) and `train` (reader).

A dataset directory ``DIR`` holds ``DIR/shards/shard-00000.zarr`` (a Zarr v3 group) or
``DIR/shards/shard-00000.h5`` (HDF5), each with three arrays:

- ``image`` (N, H, W) float16 (default) or float32, values in [0, 1];
- ``label`` (N, H, W) uint8 class indices;
- ``size``  (N, 2) int32, the true (h, w) of each sample (smaller samples are zero-padded at the
  bottom/right up to the shard's H x W).

Every sample is one compressed chunk. In Zarr each of ``image`` / ``label`` is stored as a single
Zarr *shard* file whose inner chunks are the samples (the sharding codec): one file per array per
shard instead of one file per sample keeps cluster file systems happy and halves write time, while
a single sample still decodes on its own. ``DIR/dataset.json`` indexes the shards (sample ranges,
sha256, bytes) and ``DIR/samples.jsonl`` holds one provenance record per sample (its ``id`` is
what the reader returns).

Shards are written under a temporary name and renamed when complete, so a shard path that exists
is a finished shard. The per-shard sha256 is the file's (HDF5) or the directory tree's (Zarr: the
sorted relative paths and contents, :func:`shared.hashing.sha256_tree`).
"""
from __future__ import annotations

import bisect
import json
import os
import shutil
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from shared.errors import DataError
from shared.hashing import path_bytes, sha256_array, sha256_path

SHARD_FORMATS = ("zarr", "hdf5")
SHARD_SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
IMAGE_DTYPES = ("float16", "float32")
SHARD_LAYOUT_VERSION = 1
DATASET_FILE = "dataset.json"
SAMPLES_FILE = "samples.jsonl"
SHARDS_DIR = "shards"

# Codec choice (measured on 240x240 BraTS-like slices, see BENCHMARKS.md): Blosc-LZ4 level 1 with
# byte shuffle encodes ~2x faster than zstd at a ~20% larger size; the build is write-bound, so
# speed wins. Labels are mostly zeros, LZ4 without shuffle squeezes them ~50x.
_ZARR_IMAGE_CODEC = {"cname": "lz4", "clevel": 1, "shuffle": "shuffle"}
_ZARR_LABEL_CODEC = {"cname": "lz4", "clevel": 1, "shuffle": "noshuffle"}
# A crc32c checksum per chunk (Zarr) / fletcher32 (HDF5) makes a corrupted chunk fail loudly when
# read, not only under `synth verify`; it costs a few percent of write time.
# HDF5: gzip level 1 + shuffle is readable by every HDF5 tool (h5dump, MATLAB, HDFView); lzf is
# faster but h5py-only.
_H5_KW = {"compression": "gzip", "compression_opts": 1, "shuffle": True, "fletcher32": True}


def compute_build_id(info: dict[str, Any]) -> str:
    """A dataset's generation: sha256 of its build key and shard hashes (16 hex digits).

    Deterministic (an identical rebuild gets the same id, so byte-identical rebuilds stay
    byte-identical), different whenever the content differs.
    """
    import hashlib

    h = hashlib.sha256(str(info.get("build_key", "")).encode())
    for s in info.get("shards") or []:
        h.update(b"\n" + str(s.get("sha256", "") if isinstance(s, dict) else s).encode())
    return h.hexdigest()[:16]


def generation_of(info: dict[str, Any]) -> str:
    """``build_id`` of dataset.json (computed from the shard list for datasets written before it)."""
    bid = info.get("build_id")
    return bid if isinstance(bid, str) and bid else compute_build_id(info)


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when dataset.json is replaced (it is always written by rename) or removed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def shard_relpath(k: int, fmt: str) -> str:
    """Path of shard ``k`` relative to the dataset directory."""
    if fmt not in SHARD_SUFFIX:
        raise ValueError(f"unknown shard format {fmt!r} (expected one of {SHARD_FORMATS})")
    return f"{SHARDS_DIR}/shard-{k:05d}{SHARD_SUFFIX[fmt]}"


def format_of(path: str | Path) -> str:
    suffix = Path(path).suffix
    for fmt, suf in SHARD_SUFFIX.items():
        if suffix == suf:
            return fmt
    raise DataError(f"{path}: unknown shard type (expected *.zarr or *.h5)")


def to_stored(image: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """The exact array a float image in [0, 1] is stored as (clipped, cast). Replay uses it too."""
    if dtype not in IMAGE_DTYPES:
        raise ValueError(f"unknown image dtype {dtype!r} (expected one of {IMAGE_DTYPES})")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (h, w), got shape {image.shape}")
    out = np.empty(image.shape, dtype=dtype)
    _store_into(image, out)
    return out


def _store_into(image: np.ndarray, out: np.ndarray, in_range: bool = False) -> None:
    """``out[...] = clip(image, 0, 1)`` cast to ``out.dtype`` (round to nearest even), no extra copy.

    float32 -> float16 goes through OpenCV (F16C instructions, ~5x faster than numpy's cast); it
    gives numpy's bits for every float32 in [0, 1] (checked exhaustively, tests/test_store_fast.py)
    except that -0.0 is stored as +0.0. Other input dtypes use numpy. ``in_range``: the caller
    guarantees values in [0, 1] (the clip would change nothing), so it is skipped.
    """
    if image.dtype == out.dtype:
        np.clip(image, 0.0, 1.0, out=out)
    elif image.dtype == np.float32 and out.dtype == np.float16 and image.ndim == 2 and out.flags.c_contiguous:
        import cv2

        clipped = image if in_range else np.clip(image, np.float32(0.0), np.float32(1.0))
        res = cv2.add(clipped, 0.0, dst=out, dtype=cv2.CV_16F)
        if res is not out:  # OpenCV allocated instead of writing in place (should not happen)
            out[...] = res
    else:
        np.clip(image, 0.0, 1.0, out=out, casting="unsafe")


def sample_hashes(stored_image: np.ndarray, label: np.ndarray) -> dict[str, str]:
    """Per-sample sha256 of the stored image bytes and the uint8 label bytes (both cropped)."""
    return {"image": sha256_array(stored_image), "label": sha256_array(label)}


@dataclass
class ShardResult:
    """What the writer reports for one finished shard (goes into dataset.json / samples.jsonl)."""

    path: Path
    count: int
    sha256: str
    bytes: int
    height: int
    width: int
    sample_sha256: list[dict[str, str]] = field(default_factory=list)


class ShardWriter:
    """Collects the samples of one shard, then writes each array with ONE bulk write.

    ``add()`` converts and hashes a sample; ``close()`` stacks, writes to ``.<name>.tmp-<pid>``,
    hashes the result and renames it to ``path``. Used as a context manager, an exception removes
    the temporary. An existing ``path`` is refused unless ``overwrite=True``.
    """

    def __init__(self, path: str | Path, *, fmt: str = "zarr", image_dtype: str = "float16",
                 overwrite: bool = False, capacity: int | None = None):
        if fmt not in SHARD_FORMATS:
            raise ValueError(f"unknown shard format {fmt!r} (expected one of {SHARD_FORMATS})")
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"unknown image dtype {image_dtype!r} (expected one of {IMAGE_DTYPES})")
        self.path = Path(path)
        self.fmt = fmt
        self.image_dtype = image_dtype
        self.overwrite = overwrite
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._hashes: list[dict[str, str]] = []
        self._closed = False
        # With a capacity, samples of one common shape go straight into the stacked arrays (no
        # second copy at close); a sample of another shape falls back to per-sample arrays.
        self._capacity = capacity
        self._buf: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._images)

    def add(self, image: np.ndarray, label: np.ndarray, *, in_range: bool = False) -> dict[str, str]:
        """Add one sample (image float in [0, 1], label uint8, same (h, w)); returns its hashes.
        ``in_range=True``: the image is known to be in [0, 1] (e.g. ``synthesize`` output), the
        clip is skipped (same bytes)."""
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim != 2:
            raise ValueError(f"image must be 2-D (h, w), got shape {image.shape}")
        if label.shape != image.shape:
            raise ValueError(f"label shape {label.shape} != image shape {image.shape}")
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError("label values must fit in uint8")
            label = label.astype(np.uint8)
        i = len(self._images)
        if self._capacity and i == 0 and self._buf is None:
            self._buf = (np.empty((self._capacity, *image.shape), dtype=self.image_dtype),
                         np.empty((self._capacity, *image.shape), dtype=np.uint8))
        buf = self._buf
        if buf is not None and i < buf[0].shape[0] and image.shape == buf[0].shape[1:] and \
                all(im.base is buf[0] for im in self._images[-1:]):
            stored = buf[0][i]
            _store_into(image, stored, in_range)
            buf[1][i] = label
            label = buf[1][i]
        else:
            stored = to_stored(image, self.image_dtype)
        hashes = sample_hashes(stored, label)
        self._images.append(stored)
        self._labels.append(label)
        self._hashes.append(hashes)
        return hashes

    def add_many(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> list[dict[str, str]]:
        return [self.add(im, lb) for im, lb in zip(images, labels, strict=True)]

    def _stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self._images)
        sizes = np.array([im.shape for im in self._images], dtype=np.int32).reshape(n, 2)
        h, w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
        buf = self._buf
        if buf is not None and all(im.base is buf[0] for im in self._images) and buf[0].shape[1:] == (h, w):
            return buf[0][:n], buf[1][:n], sizes
        if (sizes == (h, w)).all():
            return np.stack(self._images), np.stack(self._labels), sizes
        images = np.zeros((n, h, w), dtype=self.image_dtype)
        labels = np.zeros((n, h, w), dtype=np.uint8)
        for i, (im, lb) in enumerate(zip(self._images, self._labels)):
            images[i, : im.shape[0], : im.shape[1]] = im
            labels[i, : lb.shape[0], : lb.shape[1]] = lb
        return images, labels, sizes

    def close(self) -> ShardResult:
        if self._closed:
            raise RuntimeError("shard already closed")
        if not self._images:
            raise ValueError(f"{self.path}: refusing to write an empty shard")
        if self.path.exists() and not self.overwrite:
            raise DataError(f"{self.path}: shard already exists (not overwriting)")
        images, labels, sizes = self._stack()
        _remove(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.fmt == "zarr":
                _write_zarr(self.tmp, images, labels, sizes)
            else:
                _write_hdf5(self.tmp, images, labels, sizes)
            digest = sha256_path(self.tmp)
            nbytes = path_bytes(self.tmp)
            if self.path.exists():
                _remove(self.path)
            os.replace(self.tmp, self.path)
        except BaseException:
            _remove(self.tmp)
            raise
        self._closed = True
        self._buf = None
        result = ShardResult(self.path, len(self._images), digest, nbytes, int(images.shape[1]),
                             int(images.shape[2]), list(self._hashes))
        self._images, self._labels = [], []
        return result

    def abort(self) -> None:
        _remove(self.tmp)
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_shard(path: str | Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                fmt: str = "zarr", image_dtype: str = "float16", overwrite: bool = False) -> ShardResult:
    """Write one complete shard in one go (see :class:`ShardWriter`)."""
    with ShardWriter(path, fmt=fmt, image_dtype=image_dtype, overwrite=overwrite) as writer:
        writer.add_many(images, labels)
        return writer.close()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_zarr(path: Path, images: np.ndarray, labels: np.ndarray, sizes: np.ndarray, *,
                direct: bool = True) -> None:
    """Write one Zarr v3 shard group. zarr writes the metadata (``zarr.json``); with ``direct`` the
    chunk data is encoded here with the same codecs zarr would use (numcodecs Blosc + crc32c, then the
    sharding index), byte for byte what ``zarr`` writes (tests/test_store_fast.py compares the trees)
    but without zarr's per-chunk async pipeline (~4x less CPU per sample). If the array metadata is
    not exactly the layout this encoder knows (another zarr version's defaults), zarr writes the data."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    n, h, w = images.shape
    key = (images.shape, images.dtype.str, labels.dtype.str, sizes.shape, sizes.dtype.str)
    cached = _ZARR_METADATA.get(key) if direct else None
    if (cached is not None and images.flags.c_contiguous and labels.flags.c_contiguous and sizes.any()
            and sys.byteorder == "little"):
        # same layout as a shard zarr already wrote in this process: its zarr.json files, our data
        for rel, text in cached.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(text)
        _encode_sharded(path / "image", images, _ZARR_IMAGE_CODEC)
        _encode_sharded(path / "label", labels, _ZARR_LABEL_CODEC)
        _encode_plain(path / "size", sizes)
        return
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3,
                            attributes={"exemplar_sam_shard": SHARD_LAYOUT_VERSION, "count": int(n)})
    # write_empty_chunks: store every chunk, skipping zarr's per-chunk "all fill value?" scan;
    # all-background labels then cost a few bytes each.
    arrays = []
    for name, data, codec in (("image", images, _ZARR_IMAGE_CODEC), ("label", labels, _ZARR_LABEL_CODEC)):
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, h, w), shards=(n, h, w),
                                 compressors=[BloscCodec(**codec), Crc32cCodec()], fill_value=0,
                                 config={"write_empty_chunks": True})
        arrays.append((arr, data, codec))
    size_arr = group.create_array("size", shape=sizes.shape, dtype=sizes.dtype, chunks=(n, 2), compressors=None,
                                  fill_value=0)
    fallback = []
    for arr, data, codec in arrays:
        if not (direct and _write_sharded_direct(path / arr.basename, arr, data, codec)):
            fallback.append((arr, data))
    if not (direct and _write_plain_direct(path / size_arr.basename, size_arr, sizes)):
        fallback.append((size_arr, sizes))
    if fallback:
        # batch_size: let zarr encode all chunks of the bulk write in one batch instead of one by one.
        with zarr.config.set({"codec_pipeline.batch_size": max(1, n)}):
            for arr, data in fallback:
                arr[...] = data
    elif direct:
        # zarr's metadata for this layout, reused for the next shards (~10 ms of zarr calls each)
        _ZARR_METADATA[key] = {f.relative_to(path).as_posix(): f.read_bytes()
                               for f in sorted(path.rglob("zarr.json"))}


# zarr.json files per layout (shapes, dtypes), as zarr wrote them in this process: derived bytes.
_ZARR_METADATA: dict[tuple, dict[str, bytes]] = {}


_LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}
_DEFAULT_KEYS = {"name": "default", "configuration": {"separator": "/"}}


def _meta(arr: Any) -> dict[str, Any]:
    return json.loads(json.dumps(arr.metadata.to_dict(), default=str))


def _write_sharded_direct(folder: Path, arr: Any, data: np.ndarray, codec: dict[str, Any]) -> bool:
    """Encode ``data`` (N, H, W) as the single shard of ``arr`` (inner chunks (1, H, W): bytes,
    Blosc, crc32c; index at the end: bytes + crc32c), as zarr's sharding codec does. False (nothing
    written) if the metadata differs from that layout."""
    n, h, w = data.shape
    itemsize = data.dtype.itemsize
    meta = _meta(arr)
    # (zarr leaves out the byte order of one-byte types)
    expected = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [1, h, w],
        "codecs": [_LITTLE if itemsize > 1 else {"name": "bytes"}, {"name": "blosc", "configuration": {
            "typesize": itemsize, "cname": codec["cname"], "clevel": codec["clevel"], "shuffle": codec["shuffle"],
            "blocksize": 0}}, {"name": "crc32c"}],
        "index_codecs": [_LITTLE, {"name": "crc32c"}], "index_location": "end"}}]
    if (meta.get("codecs") != expected or meta.get("chunk_key_encoding") != _DEFAULT_KEYS
            or list(meta.get("shape", ())) != [n, h, w]
            or meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") != [n, h, w]
            or sys.byteorder != "little"
            or not data.flags.c_contiguous or data.dtype.byteorder not in "=|<"):
        return False
    _encode_sharded(folder, data, codec)
    return True


def _encode_sharded(folder: Path, data: np.ndarray, codec: dict[str, Any]) -> None:
    """The shard file of a sharded array checked by :func:`_write_sharded_direct`."""
    import google_crc32c
    from numcodecs import blosc

    n = data.shape[0]
    itemsize = data.dtype.itemsize
    cname = codec["cname"].encode()
    shuffle = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}[codec["shuffle"]]
    parts: list[bytes] = []
    index = np.empty((n, 2), dtype="<u8")
    pos = 0
    for i in range(n):
        chunk = blosc.compress(data[i], cname, codec["clevel"], shuffle, 0, itemsize)
        parts.append(chunk)
        parts.append(google_crc32c.value(chunk).to_bytes(4, "little"))
        index[i, 0], index[i, 1] = pos, len(chunk) + 4
        pos += len(chunk) + 4
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(google_crc32c.value(index_bytes).to_bytes(4, "little"))
    target = folder / "c" / "0" / "0" / "0"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.writelines(parts)


def _write_plain_direct(folder: Path, arr: Any, data: np.ndarray) -> bool:
    """The one uncompressed chunk of a small 2-D array (``size``), as zarr writes it."""
    meta = _meta(arr)
    if (meta.get("codecs") != [_LITTLE] or meta.get("chunk_key_encoding") != _DEFAULT_KEYS
            or list(meta.get("shape", ())) != list(data.shape) or data.ndim != 2
            or meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") != list(data.shape)
            or sys.byteorder != "little" or data.dtype.byteorder not in "=|<" or not data.any()):
        return False  # (zarr does not store an all-fill-value chunk; leave that case to zarr)
    _encode_plain(folder, data)
    return True


def _encode_plain(folder: Path, data: np.ndarray) -> None:
    target = folder / "c" / "0" / "0"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(np.ascontiguousarray(data).tobytes())


def _write_hdf5(path: Path, images: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> None:
    import h5py

    n, h, w = images.shape
    # track_times=False keeps the file bytes (hence the shard sha256) deterministic.
    with h5py.File(path, "w", track_order=False) as f:
        f.attrs["exemplar_sam_shard"] = SHARD_LAYOUT_VERSION
        f.attrs["count"] = int(n)
        f.create_dataset("image", data=images, chunks=(1, h, w), track_times=False, **_H5_KW)
        f.create_dataset("label", data=labels, chunks=(1, h, w), track_times=False, **_H5_KW)
        f.create_dataset("size", data=sizes, track_times=False)


# --------------------------------------------------------------------------------------------
# Reading


_INDEX_EMPTY = 0xFFFFFFFFFFFFFFFF   # sharding index entry (offset, nbytes) of a chunk that is not stored
_ZARR_DTYPES = {"float16": "<f2", "float32": "<f4", "uint8": "|u1", "int32": "<i4"}


class _ChunkError(Exception):
    """A stored chunk that fails its checksum or does not decode (``row``: the sample, or None)."""

    def __init__(self, array: str, row: int | None, problem: str):
        super().__init__(problem)
        self.array, self.row, self.problem = array, row, problem


@dataclass(frozen=True)
class _DirectArray:
    """One array of a Zarr v3 shard group in a layout read here without zarr.

    ``sharded``: one Zarr shard holding the whole array (``image``/``label``), inner chunks of one
    sample (1, H, W) encoded as bytes (little endian) -> optional Blosc -> optional crc32c, the
    index (offset, nbytes) uint64 per chunk + crc32c at the end or the start of the file.
    Otherwise one uncompressed little-endian chunk holding the whole array (``size``).
    """

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fill: int | float
    sharded: bool
    blosc: bool = False
    crc: bool = False
    index_crc: bool = False
    index_at_end: bool = True

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int64, in range) along axis 0, as zarr would return ``array[rows]``."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not self.file.exists():   # zarr does not store chunks that hold only the fill value
            out.fill(self.fill)
            return out
        if not self.sharded:
            raw = self.file.read_bytes()
            expected = int(np.prod(self.shape)) * self.dtype.itemsize
            if len(raw) != expected:
                raise _ChunkError(self.name, None, f"chunk holds {len(raw)} bytes, expected {expected}")
            out[...] = np.frombuffer(raw, self.dtype).reshape(self.shape)[rows]
            return out
        with open(self.file, "rb") as f:
            fd = f.fileno()
            return self._read_sharded(fd, os.fstat(fd).st_size, rows, out)

    def _read_sharded(self, fd: int, size: int, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        import google_crc32c
        from numcodecs import blosc

        n = self.shape[0]
        index_nbytes = n * 16 + (4 if self.index_crc else 0)
        if size < index_nbytes:
            raise _ChunkError(self.name, None, f"file of {size} bytes is too short for the shard index")
        raw = os.pread(fd, index_nbytes, size - index_nbytes if self.index_at_end else 0)
        if len(raw) != index_nbytes:
            raise _ChunkError(self.name, None, "short read of the shard index")
        if self.index_crc and google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise _ChunkError(self.name, None, "shard index crc32c checksum mismatch")
        index = np.frombuffer(raw, "<u8", count=2 * n).reshape(n, 2)[rows]
        stored = ~((index[:, 0] == _INDEX_EMPTY) & (index[:, 1] == _INDEX_EMPTY))
        offsets, nbytes = index[:, 0], index[:, 1]
        bad = stored & ((offsets > size) | (nbytes > size - np.minimum(offsets, size)))
        if bad.any():
            j = int(rows[np.argmax(bad)])
            raise _ChunkError(self.name, j, f"shard index points outside the {size}-byte file")
        if not stored.any():
            out.fill(self.fill)
            return out
        lo = int(offsets[stored].min())
        hi = int((offsets[stored] + nbytes[stored]).max())
        buf = os.pread(fd, hi - lo, lo)   # one read spanning every requested chunk
        if len(buf) != hi - lo:
            raise _ChunkError(self.name, None, "short read of the shard data")
        data = np.frombuffer(buf, np.uint8)
        chunk_nbytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        for i, (j, off, nb, ok) in enumerate(zip(rows.tolist(), offsets.tolist(), nbytes.tolist(), stored.tolist())):
            if not ok:
                out[i] = self.fill
                continue
            chunk = data[off - lo: off - lo + nb]
            if self.crc:
                if nb < 4 or google_crc32c.value(chunk[:-4]) != int.from_bytes(chunk[-4:], "little"):
                    raise _ChunkError(self.name, j, "crc32c checksum mismatch")
                chunk = chunk[:-4]
            if self.blosc:
                # the Blosc header: decoded size at bytes 4..8, stored size at 12..16
                if (len(chunk) < 16 or int.from_bytes(chunk[4:8], "little") != chunk_nbytes
                        or int.from_bytes(chunk[12:16], "little") != len(chunk)):
                    raise _ChunkError(self.name, j, "Blosc chunk header does not match the array")
                try:
                    blosc.decompress(chunk, out[i])
                except Exception as exc:
                    raise _ChunkError(self.name, j, f"Blosc decode failed ({_short(exc)})") from exc
            else:
                if len(chunk) != chunk_nbytes:
                    raise _ChunkError(self.name, j, f"chunk holds {len(chunk)} bytes, expected {chunk_nbytes}")
                out[i].reshape(-1).view(np.uint8)[:] = chunk
        return out


def _direct_zarr_arrays(path: Path) -> dict[str, _DirectArray] | None:
    """The shard group's ``image``/``label``/``size`` if every ``zarr.json`` is a layout
    :class:`_DirectArray` reads exactly as zarr does; None otherwise (zarr reads it then)."""
    if sys.byteorder != "little":
        return None
    try:
        group = json.loads((path / "zarr.json").read_bytes())
        if group.get("zarr_format") != 3 or group.get("node_type") != "group":
            return None
        arrays = {name: _direct_array(path / name, name, json.loads((path / name / "zarr.json").read_bytes()))
                  for name in ("image", "label", "size")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return None if any(a is None for a in arrays.values()) else arrays  # type: ignore[return-value]


def _direct_array(folder: Path, name: str, meta: dict[str, Any]) -> _DirectArray | None:
    shape = tuple(meta["shape"])
    if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers")
            or meta.get("data_type") not in _ZARR_DTYPES or meta.get("chunk_key_encoding") != _DEFAULT_KEYS
            or meta.get("chunk_grid", {}).get("name") != "regular"
            or tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) != shape
            or not all(isinstance(d, int) and d > 0 for d in shape)):
        return None
    dtype = np.dtype(_ZARR_DTYPES[meta["data_type"]])
    fill = meta.get("fill_value")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or fill != fill:
        return None
    if dtype.kind in "iu" and fill != int(fill):
        return None
    fill = dtype.type(fill).item()
    file = folder / "c" / "/".join("0" for _ in shape)

    def bytes_ok(codec: dict[str, Any], itemsize: int) -> bool:
        conf = codec.get("configuration") or {}
        return codec.get("name") == "bytes" and (itemsize == 1 or conf.get("endian") == "little")

    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        return None
    if len(codecs) == 1 and bytes_ok(codecs[0], dtype.itemsize):
        return _DirectArray(name, file, shape, dtype, fill, sharded=False)
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or len(shape) < 2:
        return None
    conf = codecs[0].get("configuration") or {}
    if list(conf.get("chunk_shape", ())) != [1, *shape[1:]]:
        return None
    inner = list(conf.get("codecs") or [])
    if not inner or not bytes_ok(inner[0], dtype.itemsize):
        return None
    inner = inner[1:]
    use_blosc = bool(inner) and inner[0].get("name") == "blosc"
    inner = inner[1:] if use_blosc else inner
    use_crc = bool(inner) and inner[0] == {"name": "crc32c"}
    inner = inner[1:] if use_crc else inner
    index_codecs = conf.get("index_codecs")
    if inner or index_codecs not in ([_LITTLE, {"name": "crc32c"}], [_LITTLE]):
        return None
    location = conf.get("index_location", "end")
    if location not in ("start", "end"):
        return None
    return _DirectArray(name, file, shape, dtype, fill, sharded=True, blosc=use_blosc, crc=use_crc,
                        index_crc=len(index_codecs) == 2, index_at_end=location == "end")


class _ShardHandle:
    """Open arrays of one shard (per process: h5py/zarr handles do not survive fork).

    Zarr shards in the layout the writer produces (see :func:`_direct_zarr_arrays`) are read
    without zarr: one read of the shard file, crc32c per chunk, Blosc straight into the output
    array (~3x less CPU than zarr's async codec pipeline, and no zarr import in loader workers).
    Any other Zarr layout goes through zarr. ``sample_name(j)`` names sample j of the shard in
    error messages.
    """

    def __init__(self, path: Path, count: int, sample_name: Callable[[int], str] | None = None):
        self.path = path
        self.fmt = format_of(path)
        self.pid = os.getpid()
        self._file = None
        self._direct: dict[str, _DirectArray] | None = None
        self._sizes: np.ndarray | None = None
        self._sample_name = sample_name or (lambda j: f"#{j}")
        try:
            if self.fmt == "zarr":
                self._direct = _direct_zarr_arrays(path)
                if self._direct is not None:
                    self.image, self.label, self.size = (self._direct[k] for k in ("image", "label", "size"))
                else:
                    import zarr

                    group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
                    self.image, self.label, self.size = group["image"], group["label"], group["size"]
            else:
                import h5py

                self._file = h5py.File(path, "r")
                self.image, self.label, self.size = self._file["image"], self._file["label"], self._file["size"]
        except DataError:
            raise
        except Exception as exc:  # zarr/h5py raise many types for a broken file
            self.close()
            raise DataError(f"{path}: cannot open shard ({_short(exc)})") from exc
        shape_i, shape_l, shape_s = tuple(self.image.shape), tuple(self.label.shape), tuple(self.size.shape)
        if len(shape_i) != 3 or shape_i != shape_l or shape_s != (shape_i[0], 2):
            self.close()
            raise DataError(f"{path}: inconsistent shard arrays (image {shape_i}, label {shape_l}, size {shape_s})")
        if shape_i[0] == 0:
            self.close()
            raise DataError(f"{path}: empty shard (0 samples)")
        if shape_i[0] != count:
            self.close()
            raise DataError(f"{path}: shard holds {shape_i[0]} samples, dataset.json says {count}")

    @property
    def direct(self) -> bool:
        """True when this Zarr shard is read without zarr."""
        return self._direct is not None

    def read(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, label, size) of a sample or slice of samples, as stored; DataError if corrupt."""
        if self._direct is not None:
            return self._read_direct(sl)
        try:
            if self.fmt == "zarr":
                import zarr

                n = 1 if isinstance(sl, int) else len(range(*sl.indices(self.image.shape[0])))
                with zarr.config.set({"codec_pipeline.batch_size": max(1, n)}):
                    return self.image[sl], self.label[sl], self.size[sl]
            return self.image[sl], self.label[sl], self.size[sl]
        except Exception as exc:
            raise DataError(f"{self.path}: cannot read shard data ({_short(exc)})") from exc

    def _read_direct(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.image.shape[0]
        try:
            if isinstance(sl, slice):
                rows = np.arange(n, dtype=np.int64)[sl]
            else:
                j = int(sl) + (n if int(sl) < 0 else 0)
                if not 0 <= j < n:
                    raise IndexError(f"sample {int(sl)} out of range for {n} samples")
                rows = np.array([j], dtype=np.int64)
            if self._sizes is None:  # tiny, read once (a finished shard does not change)
                self._sizes = self.size.read(np.arange(n, dtype=np.int64))
            image, label = self.image.read(rows), self.label.read(rows)
            size = self._sizes[rows]
        except _ChunkError as exc:
            where = exc.array if exc.row is None else f"{exc.array} of sample {self._sample_name(exc.row)}"
            raise DataError(f"{self.path}: cannot read shard data ({where}: {exc.problem})") from None
        except Exception as exc:
            raise DataError(f"{self.path}: cannot read shard data ({_short(exc)})") from exc
        if isinstance(sl, slice):
            return image, label, size
        return image[0], label[0], size[0]

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


class ShardDataset:
    """Random and bulk access to a dataset directory written by `synth build` / `synth pack`.

    ``ds[i]`` -> ``{"image": float32 (h, w) in [0, 1], "label": uint8 (h, w), "id": str,
    "index": i}``. Handles are opened lazily per process, so a dataset object can be handed to
    DataLoader workers (fork or spawn).
    """

    def __init__(self, root: str | Path, info: dict[str, Any], *, stamp: tuple | None = None,
                 lock: Any = None):
        self.root = Path(root)
        self.info = info
        # The generation this reader pinned: every shard read checks that dataset.json is still the
        # one it opened (a rebuild removes dataset.json before touching a shard and writes a new
        # one last), so a reader never mixes two builds, whether or not it holds the folder lock.
        self.generation = generation_of(info)
        self._stamp = stamp if stamp is not None else _stamp(self.root / DATASET_FILE)
        self._lock = lock  # shared FolderLock (shared.locks): a rebuild waits for close()
        self._shards: list[dict[str, Any]] = list(info["shards"])
        self._starts = [int(s["start"]) for s in self._shards]
        self._num_samples = int(info["num_samples"])
        self._handles: dict[int, _ShardHandle] = {}
        self._ids: list[str] | None = None

    # -- metadata ----------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"])

    @property
    def task(self) -> str:
        return str(self.info.get("task", "multi"))

    @property
    def kind(self) -> str:
        return str(self.info.get("kind", ""))

    @property
    def format(self) -> str:
        return format_of(self._shards[0]["path"]) if self._shards else str(self.info.get("format", "zarr"))

    @property
    def image_dtype(self) -> str:
        return str(self.info.get("image_dtype", "float16"))

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self._shards)

    @property
    def volumes(self) -> list[dict[str, Any]]:
        return list(self.info.get("volumes") or [])

    def shard_path(self, k: int) -> Path:
        return self.root / self._shards[k]["path"]

    def shard_range(self, k: int) -> tuple[int, int]:
        s = self._shards[k]
        return int(s["start"]), int(s["count"])

    def shard_of(self, i: int) -> tuple[int, int]:
        """(shard k, index within the shard) of sample i."""
        i = self._check_index(i)
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = _read_ids(self.root / SAMPLES_FILE, self._num_samples)
        return self._ids

    def __len__(self) -> int:
        return self._num_samples

    def _check_index(self, i: int) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += self._num_samples
        if not 0 <= i < self._num_samples:
            raise IndexError(f"sample index {i} out of range for {self._num_samples} samples")
        return i

    # -- data --------------------------------------------------------------------------------
    def check_generation(self) -> None:
        """DataError when dataset.json was replaced by another build (or removed) since opening."""
        path = self.root / DATASET_FILE
        now = _stamp(path)
        if now == self._stamp:
            return
        new_id = None
        if now is not None:
            try:
                new_id = generation_of(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError):
                new_id = None
        if new_id == self.generation:  # the same build, rewritten (e.g. copied back): carry on
            self._stamp = now
            return
        now_text = "removed" if now is None else f"now build {new_id}" if new_id else "now unreadable"
        raise DataError(f"{path}: the dataset changed while it was being read (opened build {self.generation}, "
                        f"{now_text}); a rebuild must not run under a reader: start the reader again")

    def _read(self, k: int, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read from shard k, checking the generation before and after (the bytes read are the
        pinned build's only if dataset.json was the same on both sides of the read)."""
        data = self._handle(k).read(sl)
        self.check_generation()
        return data

    def _handle(self, k: int) -> _ShardHandle:
        self.check_generation()
        handle = self._handles.get(k)
        if handle is None or handle.pid != os.getpid():
            path = self.shard_path(k)
            if not path.exists():
                raise DataError(f"{path}: shard missing")
            # a weak reference: no cycle, so a dataset dropped without close() frees its lock at once
            me = weakref.ref(self)
            handle = _ShardHandle(path, int(self._shards[k]["count"]),
                                  sample_name=lambda j, start=self._starts[k]: (
                                      me()._sample_name(start + j) if me() is not None else f"index {start + j}"))
            self._handles[k] = handle
        return handle

    def _sample_name(self, i: int) -> str:
        """``id`` (dataset index) of sample i for error messages; the index alone without samples.jsonl."""
        try:
            return f"{self.ids[i]} (index {i})"
        except (DataError, IndexError):
            return f"index {i}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._check_index(i)
        k, j = self.shard_of(i)
        image, label, size = self._read(k, j)
        h, w = int(size[0]), int(size[1])
        return {"image": np.asarray(image[:h, :w], dtype=np.float32), "label": np.ascontiguousarray(label[:h, :w]),
                "id": self.ids[i], "index": i}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for k in range(self.num_shards):
            yield from self.read_shard(k)

    def shard_arrays(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The padded stored arrays of shard k: image (N,H,W) stored dtype, label, size (N,2)."""
        image, label, size = self._read(k, slice(None))
        return np.asarray(image), np.asarray(label), np.asarray(size)

    def shard_labels(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The padded labels (N,H,W) uint8 and sizes (N,2) of shard k, without reading images."""
        handle = self._handle(k)
        n = int(handle.label.shape[0])
        if handle.direct:
            try:
                rows = np.arange(n, dtype=np.int64)
                labels, sizes = np.asarray(handle.label.read(rows)), np.asarray(handle.size.read(rows))
            except _ChunkError as exc:
                raise DataError(f"{handle.path}: cannot read shard data ({exc.array}: {exc.problem})") from None
        else:
            try:
                labels, sizes = np.asarray(handle.label[:]), np.asarray(handle.size[:])
            except Exception as exc:
                raise DataError(f"{handle.path}: cannot read shard data ({_short(exc)})") from exc
        self.check_generation()  # the labels read are the pinned build's (see _read)
        return labels, sizes

    def read_shard(self, k: int) -> list[dict[str, Any]]:
        """All samples of shard k (one bulk read per array), as ``ds[i]`` would give them."""
        start, _count = self.shard_range(k)
        image, label, size = self.shard_arrays(k)
        ids = self.ids
        out = []
        for j in range(image.shape[0]):
            h, w = int(size[j, 0]), int(size[j, 1])
            out.append({"image": image[j, :h, :w].astype(np.float32), "label": np.ascontiguousarray(label[j, :h, :w]),
                        "id": ids[start + j], "index": start + j})
        return out

    def read_range(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored (image, label, size) of samples [start, start+count), read in bulk per shard."""
        if count <= 0:
            raise ValueError("count must be positive")
        start = self._check_index(start)
        self._check_index(start + count - 1)
        parts = []
        i = start
        while i < start + count:
            k, j = self.shard_of(i)
            s0, n = self.shard_range(k)
            take = min(n - j, start + count - i)
            parts.append(self._read(k, slice(j, j + take)))
            i += take
        if len(parts) == 1:
            return tuple(np.asarray(a) for a in parts[0])  # type: ignore[return-value]
        h = max(p[0].shape[1] for p in parts)
        w = max(p[0].shape[2] for p in parts)
        padded = []
        for img, lbl, size in parts:
            if img.shape[1:] != (h, w):
                img = np.pad(img, ((0, 0), (0, h - img.shape[1]), (0, w - img.shape[2])))
                lbl = np.pad(lbl, ((0, 0), (0, h - lbl.shape[1]), (0, w - lbl.shape[2])))
            padded.append((img, lbl, size))
        return (np.concatenate([p[0] for p in padded]), np.concatenate([p[1] for p in padded]),
                np.concatenate([p[2] for p in padded]))

    def volume_arrays(self, v: int | str) -> tuple[np.ndarray, np.ndarray]:
        """Image (S, H, W) float32 and label (S, H, W) uint8 of packed volume v (index or id)."""
        vols = self.volumes
        if not vols:
            raise DataError(f"{self.root}: dataset holds no packed volumes (kind {self.kind!r}; use `synth pack`)")
        if isinstance(v, str):
            matches = [m for m in vols if m["id"] == v]
            if not matches:
                raise KeyError(f"no volume {v!r} in {self.root}")
            vol = matches[0]
        else:
            vol = vols[v]
        image, label, size = self.read_range(int(vol["start"]), int(vol["count"]))
        h, w = int(size[:, 0].max()), int(size[:, 1].max())
        if not ((size[:, 0] == h).all() and (size[:, 1] == w).all()):
            raise DataError(f"{self.root}: volume {vol['id']} has slices of different sizes")
        return image[:, :h, :w].astype(np.float32), np.ascontiguousarray(label[:, :h, :w])

    def close(self) -> None:
        for handle in self._handles.values():
            if handle.pid == os.getpid():
                handle.close()
        self._handles.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            try:
                lock.release()
            except Exception:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_lock"] = None  # the opening process holds the folder lock for its workers
        return state

    def __repr__(self) -> str:
        return (f"ShardDataset({str(self.root)!r}, kind={self.kind!r}, samples={len(self)}, "
                f"shards={self.num_shards}, format={self.format!r})")


def _read_ids(path: Path, expected: int) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: missing (the per-sample manifest; the dataset is incomplete)")
    ids: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ids.append(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: line {lineno} is not a valid sample record ({_short(exc)})") from exc
    if len(ids) != expected:
        raise DataError(f"{path}: {len(ids)} records, dataset.json says {expected} samples")
    return ids


def read_dataset_info(root: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``DIR/dataset.json`` (DataError naming the file otherwise)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset directory does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    path = root / DATASET_FILE
    if not path.exists():
        hint = " (an interrupted build? rerun `synth build` with --resume)" if (root / SHARDS_DIR).exists() else ""
        raise DataError(f"{path}: missing, {root} is not a complete dataset{hint}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({_short(exc)})") from exc
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object")
    part = info.get("part")
    if isinstance(part, dict):
        raise DataError(f"{path}: this folder is part {part.get('index')}/{part.get('count')} of a dataset "
                        f"(samples [{part.get('start')}, {part.get('stop')})); join the parts with `synth merge`")
    for key in ("shards", "num_samples", "class_names"):
        if key not in info:
            raise DataError(f"{path}: missing field {key!r}")
    shards = info["shards"]
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: 'shards' must be a non-empty list")
    expected_start = 0
    for k, s in enumerate(shards):
        try:
            start, count, rel = int(s["start"]), int(s["count"]), str(s["path"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: shard entry {k} is malformed ({_short(exc)})") from exc
        if start != expected_start or count <= 0:
            raise DataError(f"{path}: shard {rel} covers [{start}, {start + count}), expected to start at "
                            f"{expected_start} with a positive count")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DataError(f"{path}: shard path {rel!r} must be relative to the dataset directory")
        format_of(rel)
        expected_start += count
    if expected_start != int(info["num_samples"]):
        raise DataError(f"{path}: shards hold {expected_start} samples, num_samples says {info['num_samples']}")
    return info


def open_dataset(root: str | Path, *, check_files: bool = True, lock: bool = True) -> ShardDataset:
    """Open a dataset directory (Zarr or HDF5 shards, detected from dataset.json), or a dataset
    at an fsspec URL (``https://``, ``s3://``, ...: :mod:`shared.remote`, shards fetched on use).

    With ``lock`` a local reader holds ``DIR/.lock`` shared until ``close()`` (or exit), so
    ``synth build --overwrite`` into DIR is refused meanwhile; a build in progress in DIR is a
    DataError here. A read-only folder without a lock file is read unlocked (the generation
    check still guards every read). Remote shards are fetched by sha256, so they cannot mix.
    """
    from shared.locks import FolderLock, LockBusy
    from shared.remote import is_remote

    if is_remote(root):
        from shared.remote import open_remote_dataset

        return open_remote_dataset(str(root))
    root = Path(root)
    held = None
    if lock and root.is_dir():
        try:
            held = FolderLock(root, shared=True).acquire()
        except LockBusy:
            raise DataError(f"{root}: a build is writing to this folder; wait for it to finish") from None
        except OSError:
            held = None
        if held is not None and held.fd is None:
            held = None
    try:
        stamp = _stamp(root / DATASET_FILE)
        info = read_dataset_info(root)
        if check_files:
            for s in info["shards"]:
                p = root / s["path"]
                if not p.exists():
                    raise DataError(f"{p}: shard missing")
                if p.is_file() and p.stat().st_size == 0:
                    raise DataError(f"{p}: shard file is empty")
    except BaseException:
        if held is not None:
            held.release()
        raise
    return ShardDataset(root, info, stamp=stamp, lock=held)
