"""Reading a dataset folder written by `synth build` / `synth pack`: :func:`open_local_dataset` and
:class:`ShardDataset` (random access, bulk reads per shard, packed volumes).

Every read is pinned to the build that was opened: each shard read checks that ``dataset.json``
is still the one the reader opened (a rebuild removes it before touching a shard and writes a new
one last), so a reader never mixes two builds. Shards are opened lazily, once per process
(:class:`~shared.shards.formats.ShardHandle`), so a dataset object can go to DataLoader workers.
"""
from __future__ import annotations

import bisect
import os
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shared.errors import DataError
from shared.fileio import read_json
from shared.shards.formats import ShardHandle
from shared.shards.layout import (DATASET_FILE, SAMPLES_FILE, file_stamp, format_of, generation_of,
                                  read_dataset_info, read_sample_ids)


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
        self._stamp = stamp if stamp is not None else file_stamp(self.root / DATASET_FILE)
        self._lock = lock  # shared FolderLock (shared.locks): a rebuild waits for close()
        self._shards: list[dict[str, Any]] = list(info["shards"])
        self._starts = [int(s["start"]) for s in self._shards]
        self._num_samples = int(info["num_samples"])
        self._handles: dict[int, ShardHandle] = {}
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
            self._ids = read_sample_ids(self.root / SAMPLES_FILE, self._num_samples)
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
        now = file_stamp(path)
        if now == self._stamp:
            return
        new_id = None
        if now is not None:
            try:
                new_id = generation_of(read_json(path, what="dataset manifest", expect=dict))
            except DataError:
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
        data = self.handle(k).read(sl)
        self.check_generation()
        return data

    def handle(self, k: int) -> ShardHandle:
        """Shard k opened for reading in this process (opened on first use; checks the generation)."""
        self.check_generation()
        handle = self._handles.get(k)
        if handle is None or handle.pid != os.getpid():
            path = self.shard_path(k)
            if not path.exists():
                raise DataError(f"{path}: shard missing")
            # a weak reference: no cycle, so a dataset dropped without close() frees its lock at once
            me = weakref.ref(self)
            handle = ShardHandle(path, int(self._shards[k]["count"]),
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
        labels, sizes = self.handle(k).read_labels()
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


def open_local_dataset(root: str | Path, *, check_files: bool = True, lock: bool = True) -> ShardDataset:
    """Open a local dataset directory (Zarr or HDF5 shards, detected from dataset.json); URLs are
    :func:`shared.shards.opening.open_dataset`'s (it sends them to :mod:`shared.shards.remote`).

    With ``lock`` a local reader holds ``DIR/.lock`` shared until ``close()`` (or exit), so
    ``synth build --overwrite`` into DIR is refused meanwhile; a build in progress in DIR is a
    DataError here. A read-only folder without a lock file is read unlocked (the generation
    check still guards every read).
    """
    from shared.locks import FolderLock, LockBusy

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
        stamp = file_stamp(root / DATASET_FILE)
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
