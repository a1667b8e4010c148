"""Streaming training batches from shard datasets (Zarr or HDF5) with elastic determinism.

The order (like MosaicML Streaming's, simplified):

* The run reads an endless *sample stream*: epoch 0's order, then epoch 1's, ... Position ``p``
  of the stream is sample ``order(p // N)[p % N]`` of an N-sample dataset.
* An epoch's order is a seeded *shard-block shuffle*: the shards are permuted with
  ``default_rng([seed, epoch])``, consecutive groups of ``shuffle_block_shards`` shards form
  blocks, and the samples of each block are permuted with the same rng. Every sample appears once
  per epoch; a worker needs only the shards of one or two blocks in memory.
* Global step ``g`` of a run consumes the stream positions ``[g*B*W, (g+1)*B*W)`` (B the
  per-process batch size, W the world size); rank ``r`` takes ``[g*B*W + r*B, g*B*W + (r+1)*B)``.
  So the samples of a global step are the same for any W at a fixed global batch, nothing is
  dropped or duplicated, and batches may straddle epoch boundaries.
* The dataset yields whole batches. DataLoader worker ``w`` of ``nw`` builds batches
  ``w, w+nw, ...``; the DataLoader's in-order round robin restores the batch order, so the
  sequence does not depend on the worker count.
* The data position is the number of samples consumed; a resumed run starts from it without
  reading the skipped data. Prompts and augmentations draw from ``default_rng([seed, epoch,
  sample_index, ...])``, so a resumed run sees exactly the inputs of an uninterrupted one.

Errors in worker processes are passed back as an item and re-raised in the main process as the
original one-line :class:`~shared.errors.ExemplarSamError`.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shared.errors import DataError, ExemplarSamError
from train.augment import apply_augment, sample_augment
from train.config import AugmentConfig
from train.prompts import jittered_box, sample_training_prompt
from train.resize import resize_image_into, resize_label_into

PROMPT_STREAM = 1   # rng stream ids (third/fourth seed words) so prompts and augments are independent
AUGMENT_STREAM = 2
BOX_STREAM = 3      # box jitter and the point-or-box choice of mixed prompts (point streams unchanged)


def foreground_samples(ds, img_size: int | None = None, resize: str = "square") -> np.ndarray:
    """Boolean (N,): which samples of a shard dataset hold any foreground (label > 0).

    With `img_size`, judged on the label as training sees it (resized to the model input with
    `resize` (train.resize.InputGeometry), nearest neighbour, exactly as the batches are built),
    so a speck that the resize drops does not count. Reads only the label arrays, shard by shard.
    """
    from train.resize import InputGeometry

    flags = np.zeros(len(ds), dtype=bool)
    buf = None if img_size is None else np.empty((img_size, img_size), np.uint8)
    geometry = None if img_size is None or resize == "square" else InputGeometry(img_size, resize)
    for k in range(ds.num_shards):
        start, count = ds.shard_range(k)
        labels, sizes = ds.shard_labels(k)
        any_fg = labels.reshape(len(labels), -1).any(1)   # padding is zero, never counts
        if buf is not None:
            for j in np.flatnonzero(any_fg):
                h, w = int(sizes[j, 0]), int(sizes[j, 1])
                if geometry is not None:
                    geometry.label_into(labels[j, :h, :w], buf)
                    any_fg[j] = buf.any()
                elif (h, w) != buf.shape:
                    resize_label_into(labels[j, :h, :w], buf)
                    any_fg[j] = buf.any()
        flags[start:start + count] = any_fg
    return flags


class SampleOrder:
    """The seeded epoch orders of a dataset: shard-block shuffle, see the module docstring.

    `eligible` (boolean per sample, optional) restricts the stream to those samples: each epoch
    order is the full shard-block shuffle with the others removed, so the stream positions count
    eligible samples only (prompted training skips slices without foreground this way).
    """

    def __init__(self, shard_ranges: list[tuple[int, int]], seed: int, block_shards: int = 2,
                 eligible: np.ndarray | None = None):
        self.shard_ranges = [(int(s), int(c)) for s, c in shard_ranges]
        self.num_samples = sum(c for _, c in self.shard_ranges)
        self.eligible = None
        if eligible is not None and not np.all(eligible):
            self.eligible = np.asarray(eligible, dtype=bool)
            if self.eligible.shape != (self.num_samples,):
                raise ValueError(f"eligible has {self.eligible.shape} entries for {self.num_samples} samples")
            self.num_samples = int(self.eligible.sum())
        if self.num_samples == 0:
            raise DataError("dataset holds no samples" if self.eligible is None else
                            "dataset holds no sample with foreground to prompt")
        self.seed = int(seed)
        self.block_shards = max(1, int(block_shards))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        starts = np.array([s for s, _ in self.shard_ranges] + [sum(c for _, c in self.shard_ranges)])
        self._shard_starts = starts

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample indices of epoch `epoch` in reading order (int64, a permutation of range(N))."""
        if epoch in self._cache:
            self._cache.move_to_end(epoch)
            return self._cache[epoch]
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(len(self.shard_ranges))
        parts = []
        for b in range(0, len(perm), self.block_shards):
            idx = np.concatenate([np.arange(self.shard_ranges[k][0], sum(self.shard_ranges[k]), dtype=np.int64)
                                  for k in perm[b:b + self.block_shards]])
            parts.append(rng.permutation(idx))
        order = np.concatenate(parts)
        if self.eligible is not None:
            order = order[self.eligible[order]]
        self._cache[epoch] = order
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return order

    def samples_at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, sample index) of stream positions."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs = positions // self.num_samples
        samples = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            samples[sel] = self.epoch_order(int(e))[positions[sel] % self.num_samples]
        return epochs, samples

    def shard_of(self, samples: np.ndarray) -> np.ndarray:
        """Shard number of each sample index (shards are contiguous and in index order)."""
        return np.searchsorted(self._shard_starts, samples, side="right") - 1


@dataclass
class StreamSpec:
    """Everything a worker needs to build batches (picklable; the dataset is opened per worker)."""

    shards: str
    img_size: int
    batch_size: int
    seed: int
    prompt: str = "point"               # "point": binary target of a random class + one point (samples
                                        # without foreground skipped); "box": the same class's
                                        # jittered box; "mixed": either, evenly; "none": full label
    box_jitter: int = 5                 # box prompts: each side moved out by 0..box_jitter input pixels
    resize: str = "square"              # train.resize.InputGeometry mode of the model's input
    embeddings: str | None = None       # frozen encoder: train.embeddings cache folder of this model
    embedding_shape: tuple[int, ...] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    block_shards: int = 2
    start_sample: int = 0               # stream position of batch 0 (the resume position)
    eligible: np.ndarray | None = None  # prompt "point": samples with foreground (None: computed on open)
    num_batches: int | None = None      # None: endless
    rank: int = 0
    world_size: int = 1


class ShardBatchStream(IterableDataset):
    """Yields training batches (dicts of tensors) for this rank; see the module docstring.

    A batch: ``image`` (B, 1, S, S) float32 in [0, 1]; ``target`` (B, S, S) uint8, the binary mask
    (prompted) or the class map (prompt "none"); ``points`` (B, 1, 2) float32 xy in input
    pixels and ``point_labels`` (B, 1) int64 (all 1) when prompted; ``boxes`` (B, 4) float32
    x0, y0, x1, y1 and ``use_box`` (B,) bool (which samples are prompted by their box) for "box"
    and "mixed"; ``embedding`` (B, C, h, w) float32, the cached image embeddings, with a frozen
    encoder (``embeddings``); ``class_index`` (B,) int64 (the prompted class; 0 for "none"); ``position``
    (B,) int64 stream positions; ``ids`` list of sample ids; ``batch`` the batch number.
    The point of a sample is drawn the same way whatever the prompt kind, so "point" batches are
    those of runs made before box prompts existed.
    """

    def __init__(self, spec: StreamSpec):
        super().__init__()
        if spec.prompt not in ("point", "box", "mixed", "none"):
            raise ValueError(f"prompt must be 'point', 'box', 'mixed' or 'none', got {spec.prompt!r}")
        if not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"rank {spec.rank} outside world size {spec.world_size}")
        self.spec = spec
        self._ds = None
        self._pid: int | None = None
        self._order: SampleOrder | None = None
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._embeddings: list[np.ndarray] | None = None

    # -- opened lazily, in each worker ---------------------------------------------------------
    def _open(self) -> None:
        if self._ds is not None and self._pid != os.getpid():
            # A forked DataLoader worker must not share the parent's open file handles (HDF5).
            self._ds, self._order = None, None
            self._cache.clear()
        if self._ds is None:
            from shared import open_dataset

            self._pid = os.getpid()
            self._ds = open_dataset(self.spec.shards)
            ranges = [self._ds.shard_range(k) for k in range(self._ds.num_shards)]
            eligible = self.spec.eligible
            if self.spec.prompt != "none" and eligible is None:
                eligible = foreground_samples(self._ds, self.spec.img_size, self.spec.resize)
            self._order = SampleOrder(ranges, self.spec.seed, self.spec.block_shards, eligible)
            if self.spec.embeddings is not None:
                from train.embeddings import EmbeddingCache, open_cached

                folder = Path(self.spec.embeddings)
                cache = EmbeddingCache(folder.parent, folder.name)
                self._embeddings = open_cached(self._ds, cache, tuple(self.spec.embedding_shape or ()))

    @property
    def order(self) -> SampleOrder:
        self._open()
        assert self._order is not None
        return self._order

    def positions(self, batch: int) -> np.ndarray:
        """Stream positions of this rank's batch number `batch`."""
        s = self.spec
        first = s.start_sample + batch * s.batch_size * s.world_size + s.rank * s.batch_size
        return np.arange(first, first + s.batch_size, dtype=np.int64)

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored arrays of shard k (one bulk read; float16 images stay float16 until used)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        arrays = self._ds.shard_arrays(k)
        self._cache[k] = arrays
        # One block plus the next one's first shard covers batches straddling a block boundary.
        while len(self._cache) > self.spec.block_shards + 1:
            self._cache.popitem(last=False)
        return arrays

    def _sample(self, index: int, k: int | None = None) -> dict:
        """Sample `index` as stored (image float16/float32 view, label view), from the cached shard
        arrays; `k` its shard if already known."""
        if k is None:
            k = int(self.order.shard_of(np.array([index]))[0])
        start, _ = self._ds.shard_range(k)
        images, labels, sizes = self._shard(k)
        j = index - start
        h, w = int(sizes[j, 0]), int(sizes[j, 1])
        return {"image": images[j, :h, :w], "label": labels[j, :h, :w], "id": self._ds.ids[index]}

    def make_batch(self, batch: int) -> dict[str, Any]:
        """Build this rank's batch number `batch` (deterministic, independent of workers).

        Without augmentation each sample is resized straight into its slot of the preallocated
        batch arrays (no per-sample output arrays or copies); the pixels are those of
        ``train.resize.resize_image`` / ``resize_label`` (tests/train/test_data.py checks it).
        """
        from train.resize import InputGeometry

        s = self.spec
        geometry = InputGeometry(s.img_size, s.resize)
        prompted = s.prompt != "none"
        with_boxes = s.prompt in ("box", "mixed")
        pos = self.positions(batch)
        epochs, indices = self.order.samples_at(pos)
        shards = self.order.shard_of(indices).tolist()
        size = s.img_size
        augment = s.augment.enabled()
        images = np.empty((len(pos), 1, size, size), np.float32)
        # uint8 targets (binary mask or class map): 4-8x less memory to fill and move than
        # float/int64; the loss casts on the device.
        targets = np.empty((len(pos), size, size), np.uint8)
        points = np.zeros((len(pos), 1, 2), np.float32)
        classes = np.zeros(len(pos), np.int64)
        boxes = np.zeros((len(pos), 4), np.float32)
        use_box = np.full(len(pos), s.prompt == "box")
        label_buf = np.empty((size, size), np.uint8)
        embeddings = None
        if self._embeddings is not None:
            embeddings = np.empty((len(pos), *self._embeddings[0].shape[1:]), np.float32)
        ids = []
        for i, (epoch, index, k) in enumerate(zip(epochs.tolist(), indices.tolist(), shards)):
            sample = self._sample(index, k)
            if augment:
                image = geometry.image(sample["image"])
                label = geometry.label(sample["label"])
                params = sample_augment(s.augment, np.random.default_rng([s.seed, epoch, index, AUGMENT_STREAM]))
                aug_image, aug_label = apply_augment(image, label, params)
                if prompted and not aug_label.any() and label.any():
                    # zoom/rotation moved all foreground out of the frame: keep the sample as
                    # it is rather than prompt a class that is no longer there
                    aug_image, aug_label = image, label
                image, label = aug_image, aug_label
                images[i, 0] = image
            elif s.resize == "square":
                resize_image_into(sample["image"], images[i, 0])
                label = targets[i] if not prompted else label_buf
                resize_label_into(sample["label"], label)
            else:
                geometry.image_into(sample["image"], images[i, 0])
                label = targets[i] if not prompted else label_buf
                geometry.label_into(sample["label"], label)
            if prompted:
                rng = np.random.default_rng([s.seed, epoch, index, PROMPT_STREAM])
                prompt = sample_training_prompt(label, rng)
                if prompt is None:
                    # The eligible set excludes these; reaching here means it was computed for
                    # another dataset or size. Never pair a positive click with an empty target.
                    raise DataError(f"{s.shards}: sample {sample['id']} has no foreground at "
                                    f"{size} px to prompt (stale eligible-sample list)")
                cls, (x, y), mask = prompt
                targets[i] = mask
                points[i, 0] = (x, y)
                classes[i] = cls
                if with_boxes:
                    box_rng = np.random.default_rng([s.seed, epoch, index, BOX_STREAM])
                    boxes[i] = jittered_box(mask, s.box_jitter, box_rng)
                    if s.prompt == "mixed":
                        use_box[i] = box_rng.random() < 0.5
            elif augment:
                targets[i] = label
            if embeddings is not None:
                start, _ = self._ds.shard_range(k)
                embeddings[i] = self._embeddings[k][index - start]
            ids.append(sample["id"])
        out: dict[str, Any] = {
            "image": torch.from_numpy(images),
            "target": torch.from_numpy(targets),
            "class_index": torch.from_numpy(classes),
            "position": torch.from_numpy(pos),
            "ids": ids,
            "batch": batch,
        }
        if prompted:
            out["points"] = torch.from_numpy(points)
            out["point_labels"] = torch.ones((len(pos), 1), dtype=torch.int64)
        if with_boxes:
            out["boxes"] = torch.from_numpy(boxes)
            out["use_box"] = torch.from_numpy(use_box)
        if embeddings is not None:
            out["embedding"] = torch.from_numpy(embeddings)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        batch = worker
        try:
            self._open()
            while self.spec.num_batches is None or batch < self.spec.num_batches:
                yield self.make_batch(batch)
                batch += num_workers
        except ExemplarSamError as exc:
            if info is None:
                raise
            # Re-raised cleanly (one line) by the main process instead of DataLoader's traceback dump.
            yield {"error": (type(exc).__name__, str(exc))}
        finally:
            if self._ds is not None and self._pid == os.getpid():
                self._ds.close()  # lets go of the dataset's reader lock (shared.locks) when done
                self._ds, self._order = None, None
                self._cache.clear()


def _reraise(item: dict[str, Any]) -> dict[str, Any]:
    if "error" in item:
        import shared.errors as errors

        name, message = item["error"]
        raise getattr(errors, name, DataError)(message)
    return item


class _ThreadPrefetcher:
    """Build batches in a background thread (num_workers=0): the model does not wait on storage."""

    def __init__(self, iterable, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._done = object()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True)
        self._thread.start()

    def _run(self, iterable) -> None:
        try:
            for item in iterable:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)
            return
        self._queue.put(self._done)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop and wait for the thread. A daemon thread still inside torch or OpenCV when the
        interpreter exits can abort the process ("terminate called without an active exception"),
        e.g. right after Ctrl-C has saved a checkpoint."""
        self._stop.set()
        while True:  # room in the queue, so a final put() of the thread returns
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=60)


def batch_loader(stream: ShardBatchStream, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False, prefetch_thread: bool = True) -> Generator[dict[str, Any], None, None]:
    """Iterate `stream`'s batches in order: DataLoader workers, or a prefetch thread for num_workers=0."""
    if num_workers > 0:
        loader = DataLoader(stream, batch_size=None, num_workers=num_workers,
                            prefetch_factor=prefetch_factor, pin_memory=pin_memory,
                            persistent_workers=False)
        for item in loader:
            yield _reraise(item)
    elif prefetch_thread:
        pre = _ThreadPrefetcher(iter(stream), prefetch_factor)
        try:
            yield from pre
        finally:
            pre.close()
    else:
        yield from stream
