"""``synth merge``: join the parts of a dataset built with ``synth build --part i/n``.

The parts must come from the same command (equal build keys), cover every sample exactly once,
and their shards must still match their sha256. The shards are copied (or moved) as they are and
the manifests joined, so the result is byte-identical to a build without ``--part``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from shared.errors import ConfigError, DataError
from shared.fileio import read_json
from shared.hashing import sha256_path
from shared.manifest import dumps, write_dataset
from shared.shards import DATASET_FILE, SAMPLES_FILE, SHARDS_DIR
from synth.building.spec import BuildSummary, Log, diff_keys, log_to_stderr
from synth.building.manifests import identity_of
from synth.building.outdir import BuildLock, clear_output, make_output_dir, same_fs

PartInfo = tuple[Path, dict[str, Any]]  # a part folder and its dataset.json


def merge_parts(parts: Sequence[Path], out: Path, *, overwrite: bool = False, move: bool = False,
                log: Log = log_to_stderr) -> BuildSummary:
    """Join part datasets (``synth build --part i/n``) into one dataset at ``out``."""
    t0 = time.perf_counter()
    infos = read_parts(parts, log)
    total = infos[0][1]["part"]["total"]
    make_output_dir(out)
    written = 0
    with BuildLock(out, log):
        clear_output(out, overwrite=overwrite, resume=False)
        (out / SHARDS_DIR).mkdir()
        shards, records = [], []
        for p, info in infos:
            for s in info["shards"]:
                _place_shard(p / s["path"], out / s["path"], out, move)
                written += int(s["bytes"])
                shards.append(s)
            with open(p / SAMPLES_FILE, encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f if line.strip())
        write_dataset(out, merged_info(infos, shards, total), records)
    return BuildSummary(out, total, total, time.perf_counter() - t0, written)


def read_parts(parts: Sequence[Path], log: Log = log_to_stderr) -> list[PartInfo]:
    """The parts' dataset.json, in sample order, checked: one configuration, every sample covered
    once, every shard present with its recorded sha256 (DataError naming the problem otherwise)."""
    if not parts:
        raise ConfigError("merge: give at least one part folder")
    infos = []
    for p in parts:
        p = Path(p)
        path = p / DATASET_FILE
        if not path.exists():
            raise DataError(f"{path}: missing; {p} is not a finished part (rerun its build with --resume)")
        info = read_json(path)
        if "part" not in info:
            raise DataError(f"{path}: not a part of a dataset (built without --part)")
        infos.append((p, info))
    p0, i0 = infos[0]
    for p, info in infos[1:]:
        if info["build_key"] != i0["build_key"]:
            diff = diff_keys(identity_of(i0), identity_of(info))
            raise DataError(f"merge: {p} was built with a different configuration than {p0} "
                            f"(differs in: {', '.join(diff[:6]) or 'build key'})")
    if len({dumps(info.get("environment")) for _, info in infos}) > 1:
        log("note: the parts were built with different library versions (dataset.json 'environment'); "
            "the merged dataset records the first part's")
    infos.sort(key=lambda x: x[1]["part"]["start"])
    _check_coverage(infos)
    for p, info in infos:
        for s in info["shards"]:
            sp = p / s["path"]
            if not sp.exists():
                raise DataError(f"{sp}: shard missing")
            if sha256_path(sp) != s["sha256"]:
                raise DataError(f"{sp}: sha256 does not match {p / DATASET_FILE} (corrupted copy?)")
    return infos


def _check_coverage(infos: list[PartInfo]) -> None:
    total = infos[0][1]["part"]["total"]
    pos = 0
    for p, info in infos:
        start, stop = info["part"]["start"], info["part"]["stop"]
        if start < pos:
            raise DataError(f"merge: {p} covers samples [{start}, {stop}) which overlap another part")
        if start > pos:
            raise DataError(f"merge: samples [{pos}, {start}) are missing (no part covers them)")
        pos = stop
    if pos != total:
        raise DataError(f"merge: samples [{pos}, {total}) are missing (no part covers them)")


def _place_shard(src: Path, dst: Path, out: Path, move: bool) -> None:
    if move:
        os.replace(src, dst) if same_fs(src, out) else shutil.move(str(src), str(dst))
    elif src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def merged_info(infos: list[PartInfo], shards: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """The whole dataset's dataset.json fields: the first part's, without ``part``, with every
    shard and (kind ``volumes``) the geometry each part recorded for its volumes."""
    info = dict(infos[0][1])
    info.pop("part", None)
    info["shards"] = shards
    info["num_samples"] = total
    if info.get("volumes") is not None:
        geometry = {}
        for _p, pi in infos:
            for v in pi.get("volumes") or []:
                if v.get("shape") is not None:
                    geometry[v["id"]] = v
        info["volumes"] = [{**v, **{k: geometry.get(v["id"], v).get(k) for k in ("spacing", "affine", "shape")}}
                           for v in info["volumes"]]
    return info
