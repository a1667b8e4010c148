"""Writing shards: samples in, one finished shard (renamed into place when complete) out.

Each shard holds three arrays: ``image`` (N, H, W) float16 (default) or float32 in [0, 1],
``label`` (N, H, W) uint8 class indices, ``size`` (N, 2) int32, the true (h, w) of each sample
(smaller samples are zero-padded at the bottom/right up to the shard's H x W); every sample is one
compressed chunk. The format's code comes from :data:`~shared.shards.formats.FORMATS`.

A shard is written under a temporary name and renamed when complete, so a shard path that exists
is a finished shard. Its sha256 is the file's (HDF5) or the directory tree's (Zarr: the sorted
relative paths and contents, :func:`shared.hashing.sha256_tree`).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from shared.errors import DataError
from shared.fileio import temporary_sibling
from shared.hashing import path_bytes, sha256_array, sha256_path
from shared.shards.formats import shard_format
from shared.shards.layout import IMAGE_DTYPES


def to_stored(image: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """The exact array a float image in [0, 1] is stored as (clipped, cast). Replay uses it too."""
    if dtype not in IMAGE_DTYPES:
        raise ValueError(f"unknown image dtype {dtype!r} (expected one of {IMAGE_DTYPES})")
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (h, w), got shape {image.shape}")
    out = np.empty(image.shape, dtype=dtype)
    store_into(image, out)
    return out


def store_into(image: np.ndarray, out: np.ndarray, in_range: bool = False) -> None:
    """``out[...] = clip(image, 0, 1)`` cast to ``out.dtype`` (round to nearest even), no extra copy.

    float32 -> float16 goes through OpenCV (F16C instructions, ~5x faster than numpy's cast); it
    gives numpy's bits for every float32 in [0, 1] (checked exhaustively, tests/shared/shards/test_writer.py)
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


def remove_path(path: Path) -> None:
    """Remove a shard file or folder (or a link to one) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


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
        shard_format(fmt)  # ValueError for an unknown format, before any sample is converted
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"unknown image dtype {image_dtype!r} (expected one of {IMAGE_DTYPES})")
        self.path = Path(path)
        self.fmt = fmt
        self.image_dtype = image_dtype
        self.overwrite = overwrite
        self.tmp = temporary_sibling(self.path)
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
            store_into(image, stored, in_range)
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
        remove_path(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            shard_format(self.fmt).write(self.tmp, images, labels, sizes)
            digest = sha256_path(self.tmp)
            nbytes = path_bytes(self.tmp)
            if self.path.exists():
                remove_path(self.path)
            os.replace(self.tmp, self.path)
        except BaseException:
            remove_path(self.tmp)
            raise
        self._closed = True
        self._buf = None
        result = ShardResult(self.path, len(self._images), digest, nbytes, int(images.shape[1]),
                             int(images.shape[2]), list(self._hashes))
        self._images, self._labels = [], []
        return result

    def abort(self) -> None:
        remove_path(self.tmp)
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
