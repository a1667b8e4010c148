""":func:`open_dataset`, the one entry point for reading a built dataset: a local folder goes to
:func:`shared.shards.reader.open_local_dataset`, an fsspec URL (``https://``, ``s3://``, ...) to
:func:`shared.shards.remote.open_remote_dataset` (shards fetched on use into a bounded cache).

It sits above both, so neither the reader nor the remote module imports the other's caller
(``remote`` subclasses the reader's :class:`~shared.shards.reader.ShardDataset`; the reader knows
nothing of URLs).
"""
from __future__ import annotations

from pathlib import Path

from shared.shards.reader import ShardDataset, open_local_dataset
from shared.shards.remote import is_remote, open_remote_dataset


def open_dataset(root: str | Path, *, check_files: bool = True, lock: bool = True) -> ShardDataset:
    """Open a dataset directory (Zarr or HDF5 shards, detected from dataset.json), or a dataset
    at an fsspec URL (``https://``, ``s3://``, ...: :mod:`shared.shards.remote`).

    With ``lock`` a local reader holds ``DIR/.lock`` shared until ``close()`` (or exit), so
    ``synth build --overwrite`` into DIR is refused meanwhile; a build in progress in DIR is a
    DataError here. Remote shards are fetched by sha256, so they cannot mix (``check_files`` and
    ``lock`` concern local folders only).
    """
    if is_remote(root):
        return open_remote_dataset(str(root))
    return open_local_dataset(root, check_files=check_files, lock=lock)
