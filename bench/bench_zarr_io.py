"""Maintained Zarr libraries vs the hand-written shard codec (`shared/shards/zarr_codec.py`), read and write.

The question (issue 16): can tensorstore or zarr itself replace the hand-written Zarr v3 sharding
codec (Blosc-LZ4 + crc32c inner chunks, sharding index) without losing more than 10 % of its
throughput? Everything runs in ONE process, the methods alternated pass by pass (the machine is
shared: best and median pass, the 1-min load average before and after), on the real BraTS sample
slices (every slice with >= 10 tumour pixels, float16, 256 samples per shard, synth's layout):

* **read** (what a loader worker does per shard): open the shard and decode all of ``image``,
  ``label`` and ``size``:
  - hand-written: ``shared.shards.ShardHandle(...).read(slice(None))`` (the training path);
  - zarr: ``zarr.open_group`` + ``array[...]`` with ``codec_pipeline.batch_size`` = samples per
    shard (all chunks decoded in one batch, the setting the fallback reader uses);
  - tensorstore: ``ts.open`` (driver ``zarr3``, file kvstore) + ``.read().result()``, once with
    one data-copy thread (the per-core rate a loader worker gets) and once with tensorstore's
    default concurrency (all CPUs);
* **loader**: ``train.data.ShardBatchStream`` passes at img-size 512, batch 8 (resize, prompts,
  targets), with the shard read swapped for each library's: the end-to-end effect per worker;
* **build**: the shard phase of `synth build` (BraTS sample, 150 exemplars, 1024 samples, one
  worker: synthesis, float16, hashes, manifests) with the shard writer swapped: the end-to-end
  effect on a build;
* **write** (what `synth build` does per shard): write the three arrays of a shard:
  - hand-written: ``shared.shards.zarr_format.write_zarr_shard(..., direct=True)`` (zarr writes zarr.json, the
    chunks are encoded here);
  - zarr: the same layout written by zarr (``direct=False``, ``codec_pipeline.batch_size`` = n);
  - tensorstore: ``ts.open(create=True)`` with the same metadata and ``.write(array).result()``
    (one and default data-copy threads).

CPU seconds (process time, all threads) are reported next to wall seconds: they compare the
implementations independently of how busy the machine is. Every library's read is checked equal
to the hand-written reader's arrays before timing; tensorstore-written shards are read back by the
hand-written reader and compared.

Usage:  python bench/bench_zarr_io.py [--repeat 5] [--append]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_loader import collect_slices, write_shard_dataset  # noqa: E402
from bench.machine_info import cpu_model, load_average, ncpu  # noqa: E402
from shared.shards.zarr_format import write_zarr_shard  # noqa: E402

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- readers: shard folder -> (image, label, size) as stored -------------------------------------
def read_hand(path: Path) -> Arrays:
    from shared.shards import ShardHandle

    count = json.loads((path / "size" / "zarr.json").read_text())["shape"][0]
    handle = ShardHandle(path, count)
    assert handle.direct, "the hand-written reader did not take this shard"
    return handle.read(slice(None))


def read_zarr(path: Path) -> Arrays:
    import zarr

    group = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    n = group["image"].shape[0]
    with zarr.config.set({"codec_pipeline.batch_size": n}):
        return group["image"][...], group["label"][...], group["size"][...]


def ts_context(threads: int | None):
    import tensorstore as ts

    spec = {} if threads is None else {"data_copy_concurrency": {"limit": threads},
                                       "file_io_concurrency": {"limit": threads}}
    return ts.Context(spec)


def read_ts(path: Path, context) -> Arrays:
    import tensorstore as ts

    futures = [ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}},
                       context=context, read=True) for name in ("image", "label", "size")]
    stores = [f.result() for f in futures]
    reads = [s.read() for s in stores]
    return tuple(r.result() for r in reads)  # type: ignore[return-value]


# -- writers: stacked arrays -> shard folder -----------------------------------------------------
def write_hand(path: Path, a: Arrays) -> None:
    write_zarr_shard(path, *a, direct=True)


def write_zarr(path: Path, a: Arrays) -> None:
    import zarr

    with zarr.config.set({"codec_pipeline.batch_size": a[0].shape[0]}):
        write_zarr_shard(path, *a, direct=False)


def _ts_meta(data: np.ndarray, codec: dict | None) -> dict:
    """The zarr.json metadata `shared.shards` writes, for tensorstore."""
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    n = data.shape[0]
    if codec is None:   # `size`: one uncompressed chunk
        codecs = [little]
        chunk = list(data.shape)
    else:
        inner = [little if data.dtype.itemsize > 1 else {"name": "bytes"},
                 {"name": "blosc", "configuration": {"cname": codec["cname"], "clevel": codec["clevel"],
                                                     "shuffle": codec["shuffle"], "typesize": data.dtype.itemsize,
                                                     "blocksize": 0}},
                 {"name": "crc32c"}]
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, *data.shape[1:]], "codecs": inner,
            "index_codecs": [little, {"name": "crc32c"}], "index_location": "end"}}]
        chunk = [n, *data.shape[1:]]
    return {"shape": list(data.shape), "data_type": str(data.dtype), "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": codecs}


def write_ts(path: Path, a: Arrays, context) -> None:
    import tensorstore as ts

    from shared.shards import SHARD_LAYOUT_VERSION
    from shared.shards.zarr_codec import IMAGE_BLOSC, LABEL_BLOSC

    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "group",
        "attributes": {"exemplar_sam_shard": SHARD_LAYOUT_VERSION, "count": int(a[0].shape[0])}}))
    futures = []
    for name, data, codec in (("image", a[0], IMAGE_BLOSC), ("label", a[1], LABEL_BLOSC),
                              ("size", a[2], None)):
        store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)},
                         "metadata": _ts_meta(data, codec),
                         # store all-zero label chunks too, as the shard format does
                         "store_data_equal_to_fill_value": True}, create=True, context=context).result()
        futures.append(store.write(data))
    for f in futures:
        f.result()


# -- timing --------------------------------------------------------------------------------------
def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    c0, t0 = time.process_time(), time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, time.process_time() - c0, n


def loader_pass(root: Path, reader: Callable[[Path], Arrays] | None, img_size: int, batch: int, n: int) -> int:
    """Samples through ShardBatchStream with its shard read swapped for `reader` (None: ours)."""
    from shared.shards import ShardDataset
    from train.data import ShardBatchStream, StreamSpec, batch_loader

    original = ShardDataset.shard_arrays
    if reader is not None:
        ShardDataset.shard_arrays = lambda self, k: reader(self.shard_path(k))  # type: ignore[method-assign]
    try:
        stream = ShardBatchStream(StreamSpec(shards=str(root), img_size=img_size, batch_size=batch, seed=0,
                                             num_batches=n // batch))
        return sum(len(b["ids"]) for b in batch_loader(stream, 0, prefetch_thread=False))
    finally:
        ShardDataset.shard_arrays = original  # type: ignore[method-assign]


def build_pass(job, writer: Callable[[Path, Arrays], None] | None) -> int:
    """Samples of `job` built on one worker with the Zarr row of the format table
    (`shared.shards.FORMATS`) writing through `writer`."""
    import dataclasses

    from shared.shards import FORMATS
    from synth.building.run import run_job

    original = FORMATS["zarr"]
    if writer is not None:
        FORMATS["zarr"] = dataclasses.replace(
            original, write=lambda path, images, labels, sizes: writer(path, (images, labels, sizes)) or "bench")
    try:
        shutil.rmtree(job.out, ignore_errors=True)
        return run_job(job, workers=1, progress=False, log=lambda m: None).built
    finally:
        FORMATS["zarr"] = original
        shutil.rmtree(job.out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "brats2018_sample")
    ap.add_argument("--repeat", type=int, default=5, help="alternated passes per method")
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--build-samples", type=int, default=1024, help="samples of the build phase")
    ap.add_argument("--append", action="store_true", help="append the tables to BENCHMARKS.md")
    args = ap.parse_args()

    from importlib.metadata import version

    import cv2
    import torch
    import zarr

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_zarr_io_"))
    load_start = load_average()
    try:
        slices = collect_slices(args.root)
        slices = (slices * (1 + 1024 // len(slices)))[:1024]   # 4 full shards of 256
        root = write_shard_dataset(work / "ds", slices, "zarr")
        shard_dirs = sorted((root / "shards").glob("shard-*.zarr"))
        stacked = [read_hand(p) for p in shard_dirs]
        n = sum(a[0].shape[0] for a in stacked)
        one, full = ts_context(1), ts_context(None)
        readers: dict[str, Callable[[Path], Arrays]] = {
            "hand-written (shared/shards/zarr_codec.py)": read_hand,
            "zarr 3 (batch_size = shard)": read_zarr,
            "tensorstore, 1 thread": lambda p: read_ts(p, one),
            f"tensorstore, default threads ({ncpu()} CPUs)": lambda p: read_ts(p, full),
        }
        writers: dict[str, Callable[[Path, Arrays], None]] = {
            "hand-written (shared/shards/zarr_codec.py)": write_hand,
            "zarr 3 (batch_size = shard)": write_zarr,
            "tensorstore, 1 thread": lambda p, a: write_ts(p, a, one),
            f"tensorstore, default threads ({ncpu()} CPUs)": lambda p, a: write_ts(p, a, full),
        }
        # correctness first: every library reads what the hand-written reader reads, and the
        # hand-written reader reads what tensorstore writes
        for name, fn in readers.items():
            for p, ref in zip(shard_dirs, stacked):
                got = fn(p)
                assert all(np.array_equal(x, y) for x, y in zip(got, ref)), f"{name} read differs"
        check = work / "check.zarr"
        write_ts(check, stacked[0], one)
        # (tensorstore writes its own normalised zarr.json, so zarr reads it back, not the direct reader)
        assert all(np.array_equal(x, y) for x, y in zip(read_zarr(check), stacked[0])), "tensorstore write differs"
        from shared.hashing import sha256_tree

        same_bytes = {}
        for name, fn in writers.items():
            out = work / f"bytes-{len(same_bytes)}.zarr"
            fn(out, stacked[0])
            same_bytes[name] = all((out / rel).read_bytes() == (shard_dirs[0] / rel).read_bytes()
                                   for rel in ("image/c/0/0/0", "label/c/0/0/0", "size/c/0/0"))
            tree = sha256_tree(out) == sha256_tree(shard_dirs[0])
            same_bytes[name] = ("chunks and metadata" if tree else "chunks only (own zarr.json)") if same_bytes[name] else "no"
        print(f"{n} samples ({len(slices[0][1])}x{len(slices[0][1][0])}) in {len(shard_dirs)} shards at {work}",
              flush=True)
        from bench.bench_build import PRESETS, prepare

        job = prepare({**PRESETS["brats"], "num_samples": args.build_samples}, work / "build")
        build_pass(job, writers["tensorstore, 1 thread"])   # warm: imports, the bank's pages

        results: dict[str, dict[str, list[tuple[float, float]]]] = {"read": {}, "loader": {}, "build": {},
                                                                     "write": {}}
        for rep in range(args.repeat):
            for name, fn in readers.items():
                wall, cpu, count = timed(lambda: sum(fn(p)[0].shape[0] for p in shard_dirs))
                results["read"].setdefault(name, []).append((count / wall, count / cpu))
            for name, fn in readers.items():
                reader = None if name.startswith("hand") else fn
                wall, cpu, count = timed(lambda: loader_pass(root, reader, args.img_size, 8, n))
                results["loader"].setdefault(name, []).append((count / wall, count / cpu))
            for name, fn in writers.items():
                writer = None if name.startswith("hand") else fn
                wall, cpu, count = timed(lambda: build_pass(job, writer))
                results["build"].setdefault(name, []).append((count / wall, count / cpu))
            for name, fn in writers.items():
                outs = [work / "w" / f"{k}.zarr" for k in range(len(stacked))]
                shutil.rmtree(work / "w", ignore_errors=True)
                (work / "w").mkdir()
                wall, cpu, count = timed(lambda: sum((fn(o, a), a[0].shape[0])[1] for o, a in zip(outs, stacked)))
                results["write"].setdefault(name, []).append((count / wall, count / cpu))
            print(f"pass {rep + 1}/{args.repeat} done, load {load_average():.1f}", flush=True)
        load_end = load_average()

        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"## Maintained Zarr I/O vs the hand-written codec (`python bench/bench_zarr_io.py`), {when}", "",
                 f"Machine: {cpu_model()}, {ncpu()} CPUs, Python {platform.python_version()}, zarr {zarr.__version__}, "
                 f"tensorstore {version('tensorstore')}; 1-min load average {load_start:.1f} -> {load_end:.1f} (shared "
                 f"with other agents). {n} real BraTS FLAIR slices (240x240 float16 + uint8 label), "
                 f"{len(shard_dirs)} shards of 256, {args.repeat} passes per method, methods alternated within "
                 f"each pass. Read = open + decode a whole shard (image, label, size); loader = "
                 f"`ShardBatchStream` at {args.img_size} px, batch 8, 1 thread, with that shard read; build = the "
                 f"shard phase of `synth build` (BraTS sample, {args.build_samples} samples, 1 worker) with that "
                 f"shard writer; write = "
                 f"one shard's three arrays (metadata included). samples/CPU-s counts all threads' CPU time.", "",
                 "| phase | method | best samples/s | median samples/s | median vs hand-written | "
                 "median samples/CPU-s | vs hand-written per CPU-s | same files as the hand-written/zarr shard |",
                 "|---|---|---:|---:|---:|---:|---:|---|"]
        for phase, by_method in results.items():
            base = by_method["hand-written (shared/shards/zarr_codec.py)"]
            base_med = float(np.median([r[0] for r in base]))
            base_cpu = float(np.median([r[1] for r in base]))
            for name, rs in by_method.items():
                med, med_cpu = float(np.median([r[0] for r in rs])), float(np.median([r[1] for r in rs]))
                same = same_bytes[name] if phase == "write" else ""
                lines.append(f"| {phase} | {name} | {max(r[0] for r in rs):.0f} | {med:.0f} | "
                             f"{100 * med / base_med:.0f} % | {med_cpu:.0f} | {100 * med_cpu / base_cpu:.0f} % | {same} |")
        table = "\n".join(lines) + "\n"
        print()
        print(table)
        if args.append:
            path = ROOT / "BENCHMARKS.md"
            path.write_text(path.read_text().rstrip("\n") + "\n\n" + table)
            print(f"appended to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
