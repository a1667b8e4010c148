"""What `synth` and `train` agree on: errors, volumes, sources, splits, the shard format.

``from shared import open_dataset`` is the read API for built datasets; it is imported lazily so
that ``import shared`` stays light (no zarr/h5py until a dataset is opened).
"""
from __future__ import annotations

from typing import Any

__all__ = ["open_dataset"]


def __getattr__(name: str) -> Any:
    if name == "open_dataset":
        from shared.shards import open_dataset

        return open_dataset
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
