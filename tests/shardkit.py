"""Shard arrays and datasets for the shard tests: random images with a border, labels at two
levels, an all-background first sample and a smaller last one; random samples; small dataset
folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.manifest import write_dataset
from shared.shards import shard_relpath, write_shard


def random_shard_arrays(n: int, h: int, w: int, dtype=np.float16, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, h, w), dtype)
    images[:, 2:h - 3, 3:w - 2] = rng.random((n, h - 5, w - 5)).astype(dtype)
    labels = (images > 0.8).astype(np.uint8) + (images > 0.95)
    labels[0] = 0  # an all-background chunk
    sizes = np.full((n, 2), (h, w), np.int32)
    sizes[-1] = (h - 1, w - 2)
    return images, labels, sizes


def random_samples(n: int, seed: int = 0, shapes=None):
    """n float32 images in [0, 1) and uint8 labels 0-3, (40, 48) unless ``shapes`` names each."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        h, w = shapes[i] if shapes else (40, 48)
        images.append(rng.random((h, w), dtype=np.float32))
        labels.append(rng.integers(0, 4, (h, w), dtype=np.uint8))
    return images, labels


def make_dataset(root: Path, fmt: str, sizes=(5, 5, 3), dtype="float16", shapes=None, volumes=None):
    """A dataset folder of ``sum(sizes)`` random samples in shards of ``sizes``; (images, labels,
    sample records)."""
    total = sum(sizes)
    images, labels = random_samples(total, shapes=shapes)
    shards, records, start = [], [], 0
    for k, n in enumerate(sizes):
        res = write_shard(root / shard_relpath(k, fmt), images[start:start + n], labels[start:start + n],
                          fmt=fmt, image_dtype=dtype)
        shards.append({"path": shard_relpath(k, fmt), "start": start, "count": n, "sha256": res.sha256,
                       "bytes": res.bytes})
        for j, h in enumerate(res.sample_sha256):
            records.append({"id": f"s{start + j:06d}", "shard": k, "index": j, "sha256": h})
        start += n
    info = {"schema_version": 1, "kind": "synthesized", "class_names": ["background", "a", "b", "c"],
            "task": "multi", "num_samples": total, "shards": shards, "image_dtype": dtype}
    if volumes:
        info["volumes"] = volumes
    write_dataset(root, info, records)
    return images, labels, records


def labelled_dataset(root: Path, shapes, dtype="float16", fmt="zarr", shard_size=5) -> list[str]:
    """A dataset folder of one random sample per shape, in shards of ``shard_size``: two boxes of
    classes 1-3 per label, every 4th sample all background; the sample ids."""
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
