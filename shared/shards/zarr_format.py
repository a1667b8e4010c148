"""Zarr v3 shards: one group ``shard-00000.zarr`` with arrays ``image``, ``label``, ``size``.

Each of ``image`` / ``label`` is stored as a single Zarr *shard* file whose inner chunks are the
samples (the sharding codec): one file per array per shard instead of one file per sample keeps
cluster file systems happy and halves write time, while a single sample still decodes on its own.
zarr writes the metadata; the chunk data is encoded and decoded by :mod:`.zarr_codec` whenever the
metadata is that module's layout, by zarr otherwise.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shared.shards import zarr_codec
from shared.shards.layout import SHARD_ARRAYS, SHARD_LAYOUT_VERSION

# zarr.json files per layout (shapes, dtypes), as zarr wrote them in this process: derived bytes,
# so later shards of the same layout skip zarr altogether (~10 ms of zarr calls each).
_METADATA_CACHE: dict[tuple, dict[str, bytes]] = {}


def clear_metadata_cache() -> None:
    """Forget the zarr.json files kept from earlier writes (the next write asks zarr again)."""
    _METADATA_CACHE.clear()


def cached_layouts() -> int:
    """How many shard layouts (shapes, dtypes) have their zarr.json files kept in this process."""
    return len(_METADATA_CACHE)


def array_metadata(arr: Any) -> dict[str, Any]:
    """A zarr array's metadata as the plain dict its ``zarr.json`` holds."""
    return json.loads(json.dumps(arr.metadata.to_dict(), default=str))


# The zarr version whose zarr.json files :func:`_known_metadata` writes byte for byte
# (tests/shared/shards/test_zarr_format.py compares them with zarr's own for several layouts); with
# another version zarr writes them.
METADATA_ZARR_VERSION = "3.1.6"


@functools.lru_cache(maxsize=1)
def installed_zarr_version() -> str | None:
    """The version of the installed zarr package (from its distribution metadata, without importing
    zarr), None without zarr. Shards are written from :data:`METADATA_ZARR_VERSION`'s zarr.json
    template only when this is that version; with any other, zarr writes the metadata itself."""
    try:
        return importlib.metadata.version("zarr")
    except importlib.metadata.PackageNotFoundError:
        return None


def _known_metadata(images: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> dict[str, bytes] | None:
    """The four zarr.json files zarr 3.1.6 writes for this shard layout, without importing zarr
    (~0.5 s in each shard worker process); None with another zarr version."""
    if installed_zarr_version() != METADATA_ZARR_VERSION:
        return None
    n, h, w = images.shape

    def dump(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, indent=2).encode()

    def array(shape: list[int], dtype: np.dtype, codecs: list[dict[str, Any]]) -> bytes:
        fill = 0.0 if dtype.kind == "f" else 0
        return dump({"shape": shape, "data_type": dtype.name,
                     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
                     "chunk_key_encoding": zarr_codec.DEFAULT_CHUNK_KEYS, "fill_value": fill, "codecs": codecs,
                     "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": []})

    def sharded(data: np.ndarray, blosc: dict[str, Any]) -> bytes:
        inner = [zarr_codec.LITTLE_ENDIAN_BYTES if data.dtype.itemsize > 1 else {"name": "bytes"},
                 {"name": "blosc", "configuration": {"typesize": data.dtype.itemsize, "cname": blosc["cname"],
                                                     "clevel": blosc["clevel"], "shuffle": blosc["shuffle"],
                                                     "blocksize": 0}},
                 {"name": "crc32c"}]
        return array([n, h, w], data.dtype, [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, h, w], "codecs": inner,
            "index_codecs": [zarr_codec.LITTLE_ENDIAN_BYTES, {"name": "crc32c"}], "index_location": "end"}}])

    return {"image/zarr.json": sharded(images, zarr_codec.IMAGE_BLOSC),
            "label/zarr.json": sharded(labels, zarr_codec.LABEL_BLOSC),
            "size/zarr.json": array([int(s) for s in sizes.shape], sizes.dtype, [zarr_codec.LITTLE_ENDIAN_BYTES]),
            "zarr.json": dump({"attributes": {"exemplar_sam_shard": SHARD_LAYOUT_VERSION, "count": int(n)},
                               "zarr_format": 3, "node_type": "group"})}


def write_zarr_shard(path: Path, images: np.ndarray, labels: np.ndarray, sizes: np.ndarray, *,
                     direct: bool = True) -> str:
    """Write one Zarr v3 shard group at ``path`` (which must not exist).

    With ``direct`` the chunk data is encoded by :mod:`.zarr_codec` with the codecs zarr would use
    (byte for byte what ``zarr`` writes, without its per-chunk async pipeline: ~4x less CPU per
    sample); arrays whose metadata is not exactly that layout are written by zarr. Returns how the
    data was written: ``"cached"`` (zarr.json from an earlier shard of the same layout, no zarr
    call), ``"direct"`` (zarr wrote the metadata, the codec every array) or ``"zarr"`` (zarr wrote
    at least one array's data).
    """
    key = (images.shape, images.dtype.str, labels.dtype.str, sizes.shape, sizes.dtype.str)
    cached = _METADATA_CACHE.get(key) if direct else None
    if cached is None and direct and images.ndim == 3 and sizes.ndim == 2:
        cached = _known_metadata(images, labels, sizes)
        if cached is not None:
            _METADATA_CACHE[key] = cached
    if (cached is not None and images.flags.c_contiguous and labels.flags.c_contiguous and sizes.any()
            and sys.byteorder == "little"):
        # same layout as a shard zarr already wrote in this process: its zarr.json files, our data
        for rel, text in cached.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(text)
        zarr_codec.encode_sharded(path / "image", images, zarr_codec.IMAGE_BLOSC)
        zarr_codec.encode_sharded(path / "label", labels, zarr_codec.LABEL_BLOSC)
        zarr_codec.encode_plain(path / "size", sizes)
        return "cached"
    arrays = _create_arrays(path, images, labels, sizes)
    fallback = []
    for arr, data, blosc in arrays:
        meta = array_metadata(arr) if direct else {}
        if blosc is not None and direct and zarr_codec.sharded_layout_matches(meta, data, blosc):
            zarr_codec.encode_sharded(path / arr.basename, data, blosc)
        elif blosc is None and direct and zarr_codec.plain_layout_matches(meta, data):
            zarr_codec.encode_plain(path / arr.basename, data)
        else:
            fallback.append((arr, data))
    if fallback:
        import zarr

        # batch_size: let zarr encode all chunks of the bulk write in one batch instead of one by one.
        with zarr.config.set({"codec_pipeline.batch_size": max(1, images.shape[0])}):
            for arr, data in fallback:
                arr[...] = data
        return "zarr"
    _METADATA_CACHE[key] = {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("zarr.json"))}
    return "direct"


def _create_arrays(path: Path, images: np.ndarray, labels: np.ndarray,
                   sizes: np.ndarray) -> list[tuple[Any, np.ndarray, dict[str, Any] | None]]:
    """The group and its three arrays created by zarr (metadata only): (array, data, Blosc
    settings or None for the uncompressed ``size``)."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    n, h, w = images.shape
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3,
                            attributes={"exemplar_sam_shard": SHARD_LAYOUT_VERSION, "count": int(n)})
    # write_empty_chunks: store every chunk, skipping zarr's per-chunk "all fill value?" scan;
    # all-background labels then cost a few bytes each.
    # A crc32c checksum per chunk makes a corrupted chunk fail loudly when read, not only under
    # `synth verify`; it costs a few percent of write time.
    arrays: list[tuple[Any, np.ndarray, dict[str, Any] | None]] = []
    for name, data, blosc in (("image", images, zarr_codec.IMAGE_BLOSC), ("label", labels, zarr_codec.LABEL_BLOSC)):
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1, h, w), shards=(n, h, w),
                                 compressors=[BloscCodec(**blosc), Crc32cCodec()], fill_value=0,
                                 config={"write_empty_chunks": True})
        arrays.append((arr, data, blosc))
    size_arr = group.create_array("size", shape=sizes.shape, dtype=sizes.dtype, chunks=(n, 2), compressors=None,
                                  fill_value=0)
    arrays.append((size_arr, sizes, None))
    return arrays


class ZarrShardReader:
    """The arrays of one Zarr shard group: read by :mod:`.zarr_codec` when the group is in a
    layout it decodes (the writer's; no zarr import in loader workers), through zarr otherwise.
    Raises what zarr / the codec raise (:class:`.zarr_codec.ChunkError` for a bad chunk); the
    :class:`~shared.shards.formats.ShardHandle` turns that into one-line errors."""

    def __init__(self, path: Path):
        self.path = path
        self._direct = zarr_codec.open_direct_arrays(path, SHARD_ARRAYS)
        self._sizes: np.ndarray | None = None
        if self._direct is not None:
            self.image, self.label, self.size = (self._direct[k] for k in SHARD_ARRAYS)
        else:
            import zarr

            group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
            self.image, self.label, self.size = (group[k] for k in SHARD_ARRAYS)

    @property
    def direct(self) -> bool:
        """True when this shard is read without zarr."""
        return self._direct is not None

    def read(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, label, size) of a sample or slice of samples, as stored."""
        n = self.image.shape[0]
        if self._direct is None:
            import zarr

            count = 1 if isinstance(sl, int) else len(range(*sl.indices(n)))
            with zarr.config.set({"codec_pipeline.batch_size": max(1, count)}):
                return self.image[sl], self.label[sl], self.size[sl]
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
        if isinstance(sl, slice):
            return image, label, size
        return image[0], label[0], size[0]

    def read_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Every label (N, H, W) and size (N, 2) of the shard, without reading images."""
        if self._direct is None:
            return np.asarray(self.label[:]), np.asarray(self.size[:])
        rows = np.arange(self.label.shape[0], dtype=np.int64)
        return np.asarray(self.label.read(rows)), np.asarray(self.size.read(rows))

    def close(self) -> None:
        """Nothing stays open between reads."""
