"""The shard format shared by `synth` (writer) and `train` (reader).

A dataset directory ``DIR`` holds ``DIR/shards/shard-00000.zarr`` (a Zarr v3 group) or
``DIR/shards/shard-00000.h5`` (HDF5), each with arrays ``image`` (N, H, W) float16/float32 in
[0, 1], ``label`` (N, H, W) uint8 and ``size`` (N, 2) int32, plus ``DIR/dataset.json`` (the index)
and ``DIR/samples.jsonl`` (per-sample provenance). The modules, one job each:

- :mod:`.layout`: names and paths of the folder, the generation id, reading and checking
  ``dataset.json`` / ``samples.jsonl`` (written by :mod:`shared.manifest`);
- :mod:`.writer`: :class:`ShardWriter` / :func:`write_shard` (samples in, a finished shard out);
- :mod:`.reader`: :class:`ShardDataset` and :func:`open_local_dataset` (a local folder);
- :mod:`.remote`: a dataset at an fsspec URL, shards fetched into a bounded local cache;
- :mod:`.opening`: :func:`open_dataset`, local folder or URL (above both, so no import circle);
- :mod:`.formats`: the table format name -> writer and reader, and :class:`ShardHandle`;
- :mod:`.zarr_format`, :mod:`.hdf5_format`: each format's writer and reader;
- :mod:`.zarr_codec`: the Zarr chunks encoded and decoded without zarr's pipeline.

This package re-exports what `synth`, `train`, `bench` and the tests use.
"""
from __future__ import annotations

from shared.shards.formats import FORMATS, ShardFormat, ShardHandle, shard_format
from shared.shards.layout import (DATASET_FILE, IMAGE_DTYPES, SAMPLES_FILE, SHARD_FORMATS, SHARD_LAYOUT_VERSION,
                                  SHARD_SUFFIX, SHARDS_DIR, compute_build_id, format_of, generation_of,
                                  read_dataset_info, shard_relpath)
from shared.shards.opening import open_dataset
from shared.shards.reader import ShardDataset
from shared.shards.writer import ShardResult, ShardWriter, sample_hashes, store_into, to_stored, write_shard

__all__ = [
    "DATASET_FILE", "FORMATS", "IMAGE_DTYPES", "SAMPLES_FILE", "SHARDS_DIR", "SHARD_FORMATS", "SHARD_LAYOUT_VERSION",
    "SHARD_SUFFIX", "ShardDataset", "ShardFormat", "ShardHandle", "ShardResult", "ShardWriter", "compute_build_id",
    "format_of", "generation_of", "open_dataset", "read_dataset_info", "sample_hashes", "shard_format",
    "shard_relpath", "store_into", "to_stored", "write_shard",
]
