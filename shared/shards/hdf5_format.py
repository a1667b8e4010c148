"""HDF5 shards: one file ``shard-00000.h5`` with datasets ``image``, ``label``, ``size``, one
chunk per sample."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.shards.layout import SHARD_LAYOUT_VERSION

# gzip level 1 + shuffle is readable by every HDF5 tool (h5dump, MATLAB, HDFView); lzf is faster
# but h5py-only. fletcher32 makes a corrupted chunk fail loudly when read, not only under
# `synth verify`; it costs a few percent of write time.
H5_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True, "fletcher32": True}


def write_hdf5_shard(path: Path, images: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> str:
    """Write one HDF5 shard file at ``path``; returns ``"hdf5"`` (how it was written)."""
    import h5py

    n, h, w = images.shape
    # track_times=False keeps the file bytes (hence the shard sha256) deterministic.
    with h5py.File(path, "w", track_order=False) as f:
        f.attrs["exemplar_sam_shard"] = SHARD_LAYOUT_VERSION
        f.attrs["count"] = int(n)
        f.create_dataset("image", data=images, chunks=(1, h, w), track_times=False, **H5_COMPRESSION)
        f.create_dataset("label", data=labels, chunks=(1, h, w), track_times=False, **H5_COMPRESSION)
        f.create_dataset("size", data=sizes, track_times=False)
    return "hdf5"


class Hdf5ShardReader:
    """The datasets of one HDF5 shard file, open until :meth:`close` (per process: an h5py handle
    does not survive fork). Raises what h5py raises; the
    :class:`~shared.shards.formats.ShardHandle` turns that into one-line errors."""

    direct = False

    def __init__(self, path: Path):
        import h5py

        self.path = path
        self._file: Any = h5py.File(path, "r")
        try:
            self.image, self.label, self.size = self._file["image"], self._file["label"], self._file["size"]
        except BaseException:
            self.close()
            raise

    def read(self, sl: slice | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, label, size) of a sample or slice of samples, as stored."""
        return self.image[sl], self.label[sl], self.size[sl]

    def read_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Every label (N, H, W) and size (N, 2) of the shard, without reading images."""
        return np.asarray(self.label[:]), np.asarray(self.size[:])

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None
