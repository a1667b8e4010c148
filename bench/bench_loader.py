"""Loader throughput: `train`'s shard batch stream vs a SAMed-style per-slice npz loader.

Builds, from the real BraTS sample (FLAIR, whole tumour; every slice with >= 10 tumour pixels),
the same slices three ways in a scratch folder:

* a Zarr shard dataset and an HDF5 shard dataset (``shared.shards`` writer, synth's default
  256 samples per shard, float16 images),
* one ``.npz`` per slice (``image`` float32, ``label`` float32), the TransUNet/SAMed layout,

then times passes over the slices at the model size (default 512) in ONE process (no
DataLoader workers: the per-worker rate), batch 8, the loaders interleaved (the CPU may be
shared: best and median pass are reported):

* ours: :class:`train.data.ShardBatchStream` (bulk shard reads: Zarr decoded directly, HDF5 through
  h5py; cv2 resize into the batch arrays, a point prompt and its binary target per sample),
* SAMed-style: a map-style Dataset that ``np.load``s one npz per slice and resizes with
  ``scipy.ndimage.zoom`` (order 3 image, order 0 label), as SAMed's ``RandomGenerator`` does
  (also its low-res label at size/4), through a DataLoader with shuffling.

Usage:  python bench/bench_loader.py [--img-size 512] [--workers 0] [--root ../shared/data/brats2018_sample]
Prints a table; ``--append`` adds it to BENCHMARKS.md with the date and machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine_info import cpu_model, load_average, ncpu  # noqa: E402


def collect_slices(root: Path, min_pixels: int = 10) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from shared.sources import open_source

    source = open_source("brats", root)
    out = []
    for case in source.case_ids():
        vol = source.load(case)
        counts = (vol.label > 0).reshape(vol.label.shape[0], -1).sum(1)
        for z in np.flatnonzero(counts >= min_pixels):
            out.append((f"{case}_slice{z:03d}", vol.image[z], vol.label[z]))
    return out


def write_shard_dataset(root: Path, slices, fmt: str, shard_size: int = 256) -> Path:
    from shared.manifest import write_dataset
    from shared.shards import shard_relpath, write_shard

    shards, records = [], []
    for k, start in enumerate(range(0, len(slices), shard_size)):
        part = slices[start:start + shard_size]
        rel = shard_relpath(k, fmt)
        res = write_shard(root / rel, [s[1] for s in part], [s[2] for s in part], fmt=fmt)
        shards.append({"path": rel, "start": start, "count": len(part), "sha256": res.sha256, "bytes": res.bytes})
        records += [{"id": s[0], "shard": k, "index": j} for j, s in enumerate(part)]
    info = {"schema_version": 1, "kind": "exemplars", "seed": 0, "source": {"name": "brats"},
            "class_names": ["background", "tumour"], "task": "single", "fingerprint": "bench",
            "shards": shards, "num_samples": len(slices)}
    write_dataset(root, info, records)
    return root


def write_npz(root: Path, slices) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for sid, image, label in slices:
        np.savez(root / f"{sid}.npz", image=image.astype(np.float32), label=label.astype(np.float32))
    return root


class SamedNpzDataset:
    """SAMed's Synapse_dataset + RandomGenerator resize path (no random rot/flip): one npz per slice."""

    def __init__(self, root: Path, output_size: int, low_res: int):
        self.files = sorted(Path(root).glob("*.npz"))
        self.output_size, self.low_res = output_size, low_res

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from scipy.ndimage import zoom

        data = np.load(self.files[i])
        image, label = data["image"], data["label"]
        x, y = image.shape
        s = self.output_size
        if (x, y) != (s, s):
            image = zoom(image, (s / x, s / y), order=3)
            label = zoom(label, (s / x, s / y), order=0)
        lx, ly = label.shape
        low = zoom(label, (self.low_res / lx, self.low_res / ly), order=0)
        return {"image": torch.from_numpy(image.astype(np.float32)).unsqueeze(0),
                "label": torch.from_numpy(label.astype(np.float32)),
                "low_res_label": torch.from_numpy(low.astype(np.float32))}


def time_ours(root: Path, img_size: int, batch: int, workers: int, n: int) -> tuple[float, int]:
    from train.data import ShardBatchStream, StreamSpec, batch_loader

    num_batches = n // batch
    warm = ShardBatchStream(StreamSpec(shards=str(root), img_size=img_size, batch_size=batch, seed=1,
                                       num_batches=1))
    list(batch_loader(warm, 0, prefetch_thread=False))          # imports, page cache
    stream = ShardBatchStream(StreamSpec(shards=str(root), img_size=img_size, batch_size=batch, seed=0,
                                         num_batches=num_batches))
    t0 = time.perf_counter()
    count = sum(len(b["ids"]) for b in batch_loader(stream, workers, prefetch_thread=False))
    return time.perf_counter() - t0, count


def time_samed(root: Path, img_size: int, batch: int, workers: int, n: int) -> tuple[float, int]:
    import torch
    from torch.utils.data import DataLoader

    ds = SamedNpzDataset(root, img_size, img_size // 4)
    ds[0]
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    count = sum(b["image"].shape[0] for b in loader)
    return time.perf_counter() - t0, count


def machine(load_before: float | None = None) -> str:
    before = f"{load_before:.1f} -> " if load_before is not None else ""
    return (f"{cpu_model()}, {ncpu()} CPUs, Python {platform.python_version()}, load average "
            f"{before}{load_average():.1f} (1-min, start -> end; other work on the machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "brats2018_sample")
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for both loaders (0: per-worker rate)")
    ap.add_argument("--threads", type=int, default=1, help="torch/cv2 threads (1: one core per loader)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="passes per loader, interleaved; the best and the median are reported")
    ap.add_argument("--work", type=Path, help="scratch folder, kept (its zarr/, hdf5/, npz/ subfolders are rebuilt); default: a temporary one, removed")
    ap.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    load_before = load_average()
    try:
        t0 = time.perf_counter()
        slices = collect_slices(args.root)
        for sub in ("zarr", "hdf5", "npz"):   # our own scratch subfolders, rebuilt each run
            shutil.rmtree(work / sub, ignore_errors=True)
        n = len(slices)
        zarr_root = write_shard_dataset(work / "zarr", slices, "zarr")
        h5_root = write_shard_dataset(work / "hdf5", slices, "hdf5")
        npz_root = write_npz(work / "npz", slices)
        print(f"{n} BraTS slices {slices[0][1].shape} written in {time.perf_counter() - t0:.1f} s to {work}")
        loaders = (("ours, Zarr shards", time_ours, zarr_root),
                   ("ours, HDF5 shards", time_ours, h5_root),
                   ("SAMed-style npz + scipy zoom", time_samed, npz_root))
        best: dict[str, tuple[int, float]] = {}
        rates: dict[str, list[float]] = {}
        for rep in range(args.repeat):      # interleaved, best of N: the CPU may be shared
            for name, fn, root in loaders:
                seconds, count = fn(root, args.img_size, args.batch_size, args.workers, n)
                print(f"[{rep + 1}/{args.repeat}] {name:30s} {count:5d} samples in {seconds:7.2f} s "
                      f"= {count / seconds:8.1f} samples/s")
                rates.setdefault(name, []).append(count / seconds)
                if name not in best or seconds < best[name][1]:
                    best[name] = (count, seconds)
        rows = [(name, *best[name], best[name][0] / best[name][1], float(np.median(rates[name])))
                for name, _, _ in loaders]
        base, base_median = rows[-1][3], rows[-1][4]
        workers = "1 process, no workers" if args.workers == 0 else f"{args.workers} DataLoader workers"
        lines = [
            f"## Loader throughput at img-size {args.img_size} (`python bench/bench_loader.py`), "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            f"Machine: {machine(load_before)}; {workers}, {args.threads} thread(s), batch {args.batch_size}; "
            f"{n} real BraTS FLAIR slices ({slices[0][1].shape[0]}x{slices[0][1].shape[1]}) with tumour; "
            f"{args.repeat} interleaved passes per loader: the best and the median pass.",
            "Ours: `train.data.ShardBatchStream` (bulk shard read: Zarr decoded directly, HDF5 via h5py; cv2 resize into the batch arrays; point prompt + binary target). "
            "SAMed-style: one npz per slice, `scipy.ndimage.zoom` order 3 image / order 0 label (+ low-res label).",
            "",
            "| loader | samples | best s | best samples/s | vs SAMed-style | median samples/s | median vs SAMed-style |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {name} | {count} | {sec:.2f} | {rate:.1f} | {rate / base:.1f}x | {med:.1f} | {med / base_median:.1f}x |"
                  for name, count, sec, rate, med in rows]
        table = "\n".join(lines) + "\n"
        print()
        print(table)
        if args.append:
            path = ROOT / "BENCHMARKS.md"
            existing = path.read_text() if path.exists() else "# Benchmarks\n"
            path.write_text(existing.rstrip("\n") + "\n\n" + table)
            print(f"appended to {path}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
