"""Small shard datasets for the trainer's tests, written with the shared ShardWriter."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from shared.manifest import write_dataset
from shared.shards import shard_relpath, write_shard


def blob_sample(rng: np.random.Generator, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with 1..num_classes bright discs whose label is the disc's class."""
    h, w = size
    image = (0.15 + 0.05 * rng.standard_normal((h, w))).astype(np.float32)
    label = np.zeros((h, w), np.uint8)
    for cls in range(1, num_classes + 1):
        if cls > 1 and rng.random() < 0.3:
            continue
        r = int(rng.integers(max(2, min(h, w) // 10), max(3, min(h, w) // 5)))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        cv2.circle(label, (cx, cy), r, int(cls), -1)
    for cls in range(1, num_classes + 1):
        image[label == cls] += 0.3 + 0.25 * cls
    return np.clip(image, 0, 1), label


def make_dataset(root: str | Path, n: int = 24, shard_size: int = 5, size: tuple[int, int] = (40, 36),
                 fmt: str = "zarr", num_classes: int = 1, seed: int = 0) -> Path:
    """Write an n-sample dataset (ids "s0000"...) in shards of shard_size; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    shards, records = [], []
    for k, start in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - start)
        pairs = [blob_sample(rng, size, num_classes) for _ in range(count)]
        rel = shard_relpath(k, fmt)
        res = write_shard(root / rel, [p[0] for p in pairs], [p[1] for p in pairs], fmt=fmt)
        shards.append({"path": rel, "start": start, "count": count, "sha256": res.sha256, "bytes": res.bytes})
        records += [{"id": f"s{start + j:04d}", "shard": k, "index": j} for j in range(count)]
    class_names = ["background"] + [f"class{c}" for c in range(1, num_classes + 1)]
    info = {"schema_version": 1, "kind": "synthesized", "seed": seed, "source": {"name": "test-blobs"},
            "class_names": class_names, "task": "single" if num_classes == 1 else "multi",
            "fingerprint": f"blobs-{seed}-{n}", "shards": shards, "num_samples": n}
    write_dataset(root, info, records)
    return root
