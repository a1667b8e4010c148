"""What a dataset folder looks like: names, shard paths, the generation id, and reading
``dataset.json`` / ``samples.jsonl`` back with checks (writing them is :mod:`shared.manifest`).

A dataset directory ``DIR`` holds ``DIR/shards/shard-00000.zarr`` (a Zarr v3 group) or
``DIR/shards/shard-00000.h5`` (HDF5), ``DIR/dataset.json`` (the index: sample ranges, sha256 and
bytes of each shard) and ``DIR/samples.jsonl`` (one provenance record per sample; its ``id`` is
what the reader returns). Nothing here imports zarr or h5py.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from shared.errors import DataError, exception_summary
from shared.fileio import read_json

# The file name ending of each shard format; the code of each format is in formats.FORMATS.
SHARD_SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
SHARD_FORMATS = tuple(SHARD_SUFFIX)
IMAGE_DTYPES = ("float16", "float32")
SHARD_LAYOUT_VERSION = 1
DATASET_FILE = "dataset.json"
SAMPLES_FILE = "samples.jsonl"
SHARDS_DIR = "shards"
SHARD_ARRAYS = ("image", "label", "size")   # the arrays of every shard, in this order


def compute_build_id(info: dict[str, Any]) -> str:
    """A dataset's generation: sha256 of its build key and shard hashes (16 hex digits).

    Deterministic (an identical rebuild gets the same id, so byte-identical rebuilds stay
    byte-identical), different whenever the content differs.
    """
    h = hashlib.sha256(str(info.get("build_key", "")).encode())
    for s in info.get("shards") or []:
        h.update(b"\n" + str(s.get("sha256", "") if isinstance(s, dict) else s).encode())
    return h.hexdigest()[:16]


def generation_of(info: dict[str, Any]) -> str:
    """``build_id`` of dataset.json (computed from the shard list for datasets written before it)."""
    bid = info.get("build_id")
    return bid if isinstance(bid, str) and bid else compute_build_id(info)


def file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when dataset.json is replaced (it is always written by rename) or removed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def shard_relpath(k: int, fmt: str) -> str:
    """Path of shard ``k`` relative to the dataset directory."""
    if fmt not in SHARD_SUFFIX:
        raise ValueError(f"unknown shard format {fmt!r} (expected one of {SHARD_FORMATS})")
    return f"{SHARDS_DIR}/shard-{k:05d}{SHARD_SUFFIX[fmt]}"


def format_of(path: str | Path) -> str:
    """The shard format of a shard path, from its suffix (DataError for an unknown one)."""
    suffix = Path(path).suffix
    for fmt, suf in SHARD_SUFFIX.items():
        if suffix == suf:
            return fmt
    raise DataError(f"{path}: unknown shard type (expected *.zarr or *.h5)")


def read_dataset_info(root: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``DIR/dataset.json`` (DataError naming the file otherwise)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset directory does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    path = root / DATASET_FILE
    if not path.exists():
        hint = " (an interrupted build? rerun `synth build` with --resume)" if (root / SHARDS_DIR).exists() else ""
        raise DataError(f"{path}: missing, {root} is not a complete dataset{hint}")
    info = read_json(path, what="dataset manifest", expect=dict)
    part = info.get("part")
    if isinstance(part, dict):
        raise DataError(f"{path}: this folder is part {part.get('index')}/{part.get('count')} of a dataset "
                        f"(samples [{part.get('start')}, {part.get('stop')})); join the parts with `synth merge`")
    for key in ("shards", "num_samples", "class_names"):
        if key not in info:
            raise DataError(f"{path}: missing field {key!r}")
    check_shard_entries(path, info["shards"], info["num_samples"])
    return info


def check_shard_entries(path: Path, shards: Any, num_samples: Any) -> None:
    """The ``shards`` list of dataset.json ``path``: contiguous sample ranges covering
    ``num_samples``, relative paths of a known format (DataError naming the file otherwise)."""
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: 'shards' must be a non-empty list")
    expected_start = 0
    for k, s in enumerate(shards):
        try:
            start, count, rel = int(s["start"]), int(s["count"]), str(s["path"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: shard entry {k} is malformed ({exception_summary(exc)})") from exc
        if start != expected_start or count <= 0:
            raise DataError(f"{path}: shard {rel} covers [{start}, {start + count}), expected to start at "
                            f"{expected_start} with a positive count")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DataError(f"{path}: shard path {rel!r} must be relative to the dataset directory")
        format_of(rel)
        expected_start += count
    if expected_start != int(num_samples):
        raise DataError(f"{path}: shards hold {expected_start} samples, num_samples says {num_samples}")


def read_sample_ids(path: Path, expected: int) -> list[str]:
    """The ``id`` of every record of ``samples.jsonl`` ``path``, checked to be ``expected`` many."""
    if not path.exists():
        raise DataError(f"{path}: missing (the per-sample manifest; the dataset is incomplete)")
    ids: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ids.append(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: line {lineno} is not a valid sample record "
                                f"({exception_summary(exc)})") from exc
    if len(ids) != expected:
        raise DataError(f"{path}: {len(ids)} records, dataset.json says {expected} samples")
    return ids
