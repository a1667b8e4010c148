"""The shard layout's Zarr v3 chunks encoded and decoded here, without zarr's codec pipeline.

zarr encodes and decodes chunk by chunk through an async pipeline; for the shard layout (one Zarr
*shard* file per array whose inner chunks are the samples) that costs ~4x the CPU of doing the
same steps directly (write) and ~3x (read). This module does those steps:

* encode: bytes (little endian) -> Blosc (numcodecs) -> crc32c per inner chunk, then the sharding
  index (offset, nbytes) uint64 per chunk + crc32c at the end: byte for byte what zarr writes
  (tests/shared/shards/test_zarr_codec.py and tests/shared/shards/test_zarr_format.py compare the trees). zarr still writes the
  metadata (``zarr.json``); :func:`sharded_layout_matches` / :func:`plain_layout_matches` say
  whether that metadata is exactly the layout encoded here (another zarr version's defaults may
  not be; then zarr writes the data).
* decode: :func:`open_direct_arrays` reads the ``zarr.json`` files of a shard group and returns a
  :class:`DirectArray` per array when the layout is one decoded here (the writer's, and the
  variants zarr writes with other Blosc settings, no checksums, the index at the start, missing
  chunks); otherwise None and the caller uses zarr.

Needs numcodecs (Blosc) and google-crc32c, both dependencies of zarr; zarr itself is not imported.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import exception_summary

# Codec choice (measured on 240x240 BraTS-like slices, see BENCHMARKS.md): Blosc-LZ4 level 1 with
# byte shuffle encodes ~2x faster than zstd at a ~20% larger size; the build is write-bound, so
# speed wins. Labels are mostly zeros, LZ4 without shuffle squeezes them ~50x.
IMAGE_BLOSC = {"cname": "lz4", "clevel": 1, "shuffle": "shuffle"}
LABEL_BLOSC = {"cname": "lz4", "clevel": 1, "shuffle": "noshuffle"}

LITTLE_ENDIAN_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
DEFAULT_CHUNK_KEYS = {"name": "default", "configuration": {"separator": "/"}}
INDEX_EMPTY = 0xFFFFFFFFFFFFFFFF   # sharding index entry (offset, nbytes) of a chunk that is not stored
ZARR_DTYPES = {"float16": "<f2", "float32": "<f4", "uint8": "|u1", "int32": "<i4"}


# --------------------------------------------------------------------------------------------
# Encoding


def _writable(data: np.ndarray) -> bool:
    return sys.byteorder == "little" and data.flags.c_contiguous and data.dtype.byteorder in "=|<"


def sharded_layout_matches(meta: dict[str, Any], data: np.ndarray, blosc: dict[str, Any]) -> bool:
    """True when ``meta`` (a ``zarr.json`` as a dict) describes ``data`` (N, H, W) stored as ONE
    shard of inner chunks (1, H, W) with bytes -> Blosc(``blosc``) -> crc32c and an index at the
    end, exactly what :func:`encode_sharded` writes."""
    n, h, w = data.shape
    itemsize = data.dtype.itemsize
    # (zarr leaves out the byte order of one-byte types)
    expected = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [1, h, w],
        "codecs": [LITTLE_ENDIAN_BYTES if itemsize > 1 else {"name": "bytes"}, {"name": "blosc", "configuration": {
            "typesize": itemsize, "cname": blosc["cname"], "clevel": blosc["clevel"], "shuffle": blosc["shuffle"],
            "blocksize": 0}}, {"name": "crc32c"}],
        "index_codecs": [LITTLE_ENDIAN_BYTES, {"name": "crc32c"}], "index_location": "end"}}]
    return (meta.get("codecs") == expected and meta.get("chunk_key_encoding") == DEFAULT_CHUNK_KEYS
            and list(meta.get("shape", ())) == [n, h, w]
            and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == [n, h, w]
            and _writable(data))


def plain_layout_matches(meta: dict[str, Any], data: np.ndarray) -> bool:
    """True when ``meta`` describes 2-D ``data`` as one uncompressed little-endian chunk (``size``)
    and zarr would store that chunk (it does not store one holding only the fill value 0)."""
    return (meta.get("codecs") == [LITTLE_ENDIAN_BYTES] and meta.get("chunk_key_encoding") == DEFAULT_CHUNK_KEYS
            and list(meta.get("shape", ())) == list(data.shape) and data.ndim == 2
            and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == list(data.shape)
            and sys.byteorder == "little" and data.dtype.byteorder in "=|<" and bool(data.any()))


def encode_sharded(folder: Path, data: np.ndarray, blosc: dict[str, Any]) -> None:
    """Write the shard file ``folder/c/0/0/0`` of an array checked by :func:`sharded_layout_matches`."""
    import google_crc32c
    from numcodecs import blosc as nc_blosc

    n = data.shape[0]
    itemsize = data.dtype.itemsize
    cname = blosc["cname"].encode()
    shuffle = {"noshuffle": nc_blosc.NOSHUFFLE, "shuffle": nc_blosc.SHUFFLE,
               "bitshuffle": nc_blosc.BITSHUFFLE}[blosc["shuffle"]]
    parts: list[bytes] = []
    index = np.empty((n, 2), dtype="<u8")
    pos = 0
    for i in range(n):
        chunk = nc_blosc.compress(data[i], cname, blosc["clevel"], shuffle, 0, itemsize)
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


def encode_plain(folder: Path, data: np.ndarray) -> None:
    """Write the one chunk ``folder/c/0/0`` of an array checked by :func:`plain_layout_matches`."""
    target = folder / "c" / "0" / "0"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(np.ascontiguousarray(data).tobytes())


# --------------------------------------------------------------------------------------------
# Decoding


class ChunkError(Exception):
    """A stored chunk that fails its checksum or does not decode (``row``: the sample, or None)."""

    def __init__(self, array: str, row: int | None, problem: str):
        super().__init__(problem)
        self.array, self.row, self.problem = array, row, problem


@dataclass(frozen=True)
class DirectArray:
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
        """Rows ``rows`` (int64, in range) along axis 0, as zarr would return ``array[rows]``;
        :class:`ChunkError` for a chunk that fails its checksum or does not decode."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not self.file.exists():   # zarr does not store chunks that hold only the fill value
            out.fill(self.fill)
            return out
        if not self.sharded:
            raw = self.file.read_bytes()
            expected = int(np.prod(self.shape)) * self.dtype.itemsize
            if len(raw) != expected:
                raise ChunkError(self.name, None, f"chunk holds {len(raw)} bytes, expected {expected}")
            out[...] = np.frombuffer(raw, self.dtype).reshape(self.shape)[rows]
            return out
        with open(self.file, "rb") as f:
            fd = f.fileno()
            return self._read_sharded(fd, os.fstat(fd).st_size, rows, out)

    def _read_index(self, fd: int, size: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, nbytes, stored) of the inner chunks ``rows``, checked against the file size."""
        import google_crc32c

        n = self.shape[0]
        index_nbytes = n * 16 + (4 if self.index_crc else 0)
        if size < index_nbytes:
            raise ChunkError(self.name, None, f"file of {size} bytes is too short for the shard index")
        raw = os.pread(fd, index_nbytes, size - index_nbytes if self.index_at_end else 0)
        if len(raw) != index_nbytes:
            raise ChunkError(self.name, None, "short read of the shard index")
        if self.index_crc and google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise ChunkError(self.name, None, "shard index crc32c checksum mismatch")
        index = np.frombuffer(raw, "<u8", count=2 * n).reshape(n, 2)[rows]
        stored = ~((index[:, 0] == INDEX_EMPTY) & (index[:, 1] == INDEX_EMPTY))
        offsets, nbytes = index[:, 0], index[:, 1]
        bad = stored & ((offsets > size) | (nbytes > size - np.minimum(offsets, size)))
        if bad.any():
            j = int(rows[np.argmax(bad)])
            raise ChunkError(self.name, j, f"shard index points outside the {size}-byte file")
        return offsets, nbytes, stored

    def _read_sharded(self, fd: int, size: int, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        offsets, nbytes, stored = self._read_index(fd, size, rows)
        if not stored.any():
            out.fill(self.fill)
            return out
        lo = int(offsets[stored].min())
        hi = int((offsets[stored] + nbytes[stored]).max())
        buf = os.pread(fd, hi - lo, lo)   # one read spanning every requested chunk
        if len(buf) != hi - lo:
            raise ChunkError(self.name, None, "short read of the shard data")
        data = np.frombuffer(buf, np.uint8)
        for i, (j, off, nb, ok) in enumerate(zip(rows.tolist(), offsets.tolist(), nbytes.tolist(), stored.tolist())):
            if ok:
                self._decode_chunk(data[off - lo: off - lo + nb], j, out[i])
            else:
                out[i] = self.fill
        return out

    def _decode_chunk(self, chunk: np.ndarray, j: int, out: np.ndarray) -> None:
        """Inner chunk ``j`` (its stored bytes) decoded into ``out`` (one sample)."""
        import google_crc32c
        from numcodecs import blosc

        chunk_nbytes = out.nbytes
        if self.crc:
            if len(chunk) < 4 or google_crc32c.value(chunk[:-4]) != int.from_bytes(chunk[-4:], "little"):
                raise ChunkError(self.name, j, "crc32c checksum mismatch")
            chunk = chunk[:-4]
        if self.blosc:
            # the Blosc header: decoded size at bytes 4..8, stored size at 12..16
            if (len(chunk) < 16 or int.from_bytes(chunk[4:8], "little") != chunk_nbytes
                    or int.from_bytes(chunk[12:16], "little") != len(chunk)):
                raise ChunkError(self.name, j, "Blosc chunk header does not match the array")
            try:
                blosc.decompress(chunk, out)
            except Exception as exc:
                raise ChunkError(self.name, j, f"Blosc decode failed ({exception_summary(exc)})") from exc
        else:
            if len(chunk) != chunk_nbytes:
                raise ChunkError(self.name, j, f"chunk holds {len(chunk)} bytes, expected {chunk_nbytes}")
            out.reshape(-1).view(np.uint8)[:] = chunk


def open_direct_arrays(path: Path, names: tuple[str, ...]) -> dict[str, DirectArray] | None:
    """The arrays ``names`` of the Zarr v3 group at ``path`` if the group's and every array's
    ``zarr.json`` is a layout :class:`DirectArray` reads exactly as zarr does; None otherwise
    (zarr reads it then)."""
    if sys.byteorder != "little":
        return None
    try:
        group = json.loads((path / "zarr.json").read_bytes())
        if group.get("zarr_format") != 3 or group.get("node_type") != "group":
            return None
        arrays = {name: direct_array(path / name, name, json.loads((path / name / "zarr.json").read_bytes()))
                  for name in names}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return None if any(a is None for a in arrays.values()) else arrays  # type: ignore[return-value]


def _plain_header(meta: dict[str, Any]) -> tuple[tuple[int, ...], np.dtype, int | float] | None:
    """(shape, dtype, fill value) of array metadata with one regular chunk covering the array."""
    shape = tuple(meta["shape"])
    if (meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers")
            or meta.get("data_type") not in ZARR_DTYPES or meta.get("chunk_key_encoding") != DEFAULT_CHUNK_KEYS
            or meta.get("chunk_grid", {}).get("name") != "regular"
            or tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) != shape
            or not all(isinstance(d, int) and d > 0 for d in shape)):
        return None
    dtype = np.dtype(ZARR_DTYPES[meta["data_type"]])
    fill = meta.get("fill_value")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or fill != fill:
        return None
    if dtype.kind in "iu" and fill != int(fill):
        return None
    return shape, dtype, dtype.type(fill).item()


def _bytes_ok(codec: dict[str, Any], itemsize: int) -> bool:
    conf = codec.get("configuration") or {}
    return codec.get("name") == "bytes" and (itemsize == 1 or conf.get("endian") == "little")


def direct_array(folder: Path, name: str, meta: dict[str, Any]) -> DirectArray | None:
    """The :class:`DirectArray` for array ``name`` (its folder, its ``zarr.json`` as a dict), or
    None when the layout is not one read here."""
    header = _plain_header(meta)
    if header is None:
        return None
    shape, dtype, fill = header
    file = folder / "c" / "/".join("0" for _ in shape)
    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        return None
    if len(codecs) == 1 and _bytes_ok(codecs[0], dtype.itemsize):
        return DirectArray(name, file, shape, dtype, fill, sharded=False)
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or len(shape) < 2:
        return None
    conf = codecs[0].get("configuration") or {}
    if list(conf.get("chunk_shape", ())) != [1, *shape[1:]]:
        return None
    inner = list(conf.get("codecs") or [])
    if not inner or not _bytes_ok(inner[0], dtype.itemsize):
        return None
    inner = inner[1:]
    use_blosc = bool(inner) and inner[0].get("name") == "blosc"
    inner = inner[1:] if use_blosc else inner
    use_crc = bool(inner) and inner[0] == {"name": "crc32c"}
    inner = inner[1:] if use_crc else inner
    index_codecs = conf.get("index_codecs")
    if inner or index_codecs not in ([LITTLE_ENDIAN_BYTES, {"name": "crc32c"}], [LITTLE_ENDIAN_BYTES]):
        return None
    location = conf.get("index_location", "end")
    if location not in ("start", "end"):
        return None
    return DirectArray(name, file, shape, dtype, fill, sharded=True, blosc=use_blosc, crc=use_crc,
                       index_crc=len(index_codecs) == 2, index_at_end=location == "end")
