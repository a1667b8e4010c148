"""The shard formats as a table (format name -> writer and reader), as MosaicML Streaming keeps
its ``_writers`` / ``_readers``, and the per-process handle that reads one shard of any format.

A new format is a ``write(path, images, labels, sizes)`` function, a reader class with the
:class:`ShardReader` methods, a row in :data:`FORMATS` and a suffix in
:data:`~shared.shards.layout.SHARD_SUFFIX`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from shared.errors import DataError, exception_summary
from shared.shards.hdf5_format import Hdf5ShardReader, write_hdf5_shard
from shared.shards.layout import SHARD_FORMATS, format_of
from shared.shards.zarr_codec import ChunkError
from shared.shards.zarr_format import ZarrShardReader, write_zarr_shard


class ShardReader(Protocol):
    """The open arrays of one shard, as stored (a format's reader class)."""

    image: Any   # (N, H, W), with .shape
    label: Any   # (N, H, W)
    size: Any    # (N, 2)
    direct: bool  # read without the format's library (Zarr: by .zarr_codec)

    def read(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def read_labels(self) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


ShardWrite = Callable[[Path, np.ndarray, np.ndarray, np.ndarray], str]


@dataclass(frozen=True)
class ShardFormat:
    """How one format writes a shard (stacked padded arrays -> a new path) and opens one."""

    name: str
    write: ShardWrite
    reader: Callable[[Path], ShardReader]


FORMATS: dict[str, ShardFormat] = {
    "zarr": ShardFormat("zarr", write_zarr_shard, ZarrShardReader),
    "hdf5": ShardFormat("hdf5", write_hdf5_shard, Hdf5ShardReader),
}


def shard_format(name: str) -> ShardFormat:
    """The row of :data:`FORMATS` for ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown shard format {name!r} (expected one of {SHARD_FORMATS})") from None


class ShardHandle:
    """One shard opened for reading in this process (h5py/zarr handles do not survive fork:
    ``pid`` says which process opened it), with every failure a one-line :class:`DataError`.

    ``count``: the samples dataset.json says the shard holds (checked); ``sample_name(j)`` names
    sample j of the shard in error messages.
    """

    def __init__(self, path: Path, count: int, sample_name: Callable[[int], str] | None = None):
        self.path = path
        self.fmt = format_of(path)
        self.pid = os.getpid()
        self._sample_name = sample_name or (lambda j: f"#{j}")
        try:
            self._reader: ShardReader = FORMATS[self.fmt].reader(path)
        except DataError:
            raise
        except Exception as exc:  # zarr/h5py raise many types for a broken file
            raise DataError(f"{path}: cannot open shard ({exception_summary(exc)})") from exc
        self.image, self.label, self.size = self._reader.image, self._reader.label, self._reader.size
        shape_i, shape_l, shape_s = tuple(self.image.shape), tuple(self.label.shape), tuple(self.size.shape)
        problem = None
        if len(shape_i) != 3 or shape_i != shape_l or shape_s != (shape_i[0], 2):
            problem = f"inconsistent shard arrays (image {shape_i}, label {shape_l}, size {shape_s})"
        elif shape_i[0] == 0:
            problem = "empty shard (0 samples)"
        elif shape_i[0] != count:
            problem = f"shard holds {shape_i[0]} samples, dataset.json says {count}"
        if problem is not None:
            self.close()
            raise DataError(f"{path}: {problem}")

    @property
    def direct(self) -> bool:
        """True when this (Zarr) shard is decoded without zarr (:mod:`.zarr_codec`)."""
        return self._reader.direct

    def _error(self, exc: Exception) -> DataError:
        if isinstance(exc, ChunkError):
            where = exc.array if exc.row is None else f"{exc.array} of sample {self._sample_name(exc.row)}"
            return DataError(f"{self.path}: cannot read shard data ({where}: {exc.problem})")
        return DataError(f"{self.path}: cannot read shard data ({exception_summary(exc)})")

    def read(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, label, size) of a sample or slice of samples, as stored; DataError if corrupt."""
        try:
            return self._reader.read(sl)
        except ChunkError as exc:
            raise self._error(exc) from None
        except Exception as exc:
            raise self._error(exc) from exc

    def read_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Every padded label (N, H, W) uint8 and size (N, 2) of the shard, without the images."""
        try:
            return self._reader.read_labels()
        except ChunkError as exc:
            raise self._error(exc) from None
        except Exception as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self._reader.close()
