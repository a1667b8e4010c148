"""`train pretrain`: promptable pretraining of the tiny SAM on label-free automatic masks.

No pretrained weights exist for `tiny`, so this makes some, in the spirit of SAM's data engine:

1. Every slice of the chosen cases (images only, `Source.image_chunks`: label files are never
   opened) is resized to
   the model's input size and cut into regions by :mod:`train.automasks` (several segmenters at
   several scales). Each (slice, partition) pair becomes one sample of an ordinary shard dataset
   in ``PRE/automasks/``, written in a seeded random order (the trainer's shard-block shuffle
   then mixes cases and partitions within every batch).
2. :func:`train.fit.fit` trains on it with the tiny recipe: the same data stream, prompt sampler
   (a random region, a random pixel of it; the target is that region), loss, optimiser,
   schedule, resume and metrics as `train fit`. ``PRE`` is an ordinary run directory.
3. ``PRE/model.pt`` gets the full state dict (what `train fit --model tiny --checkpoint` and
   `train eval --model tiny --checkpoint` load), ``PRE/config.json`` a ``pretrain`` section
   (sources, cases, slice counts, seeds, split, mask settings) and ``PRE/preview.png`` automatic
   masks next to the model's predictions for a point in them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from shared import open_dataset
from shared.errors import ConfigError, DataError
from shared.fileio import read_json
from shared.manifest import SCHEMA_VERSION, tool_version, write_dataset
from shared.shards import SHARDS_DIR, ShardWriter, shard_relpath
from shared.sources import open_source
from shared.splits import resolve_split
from train.automasks import AutoMaskConfig, slice_partitions
from train.checkpointing import CONFIG_FILE, atomic_torch_save, load_trained_model
from train.fit import fit
from train.fit_setup import prepare_rundir, write_run_json
from train.overlays import CLASS_BGR, POINT_BGR
from train.prompts import sample_training_prompt
from train.resize import resize_image

AUTOMASK_DIR = "automasks"
MODEL_FILE = "model.pt"
PREVIEW_FILE = "preview.png"
SHARD_SIZE = 256
_ORDER_STREAM = 11     # rng stream ids under the run seed (sample order, preview prompts)
_PREVIEW_STREAM = 12
TARGET_BGR = (60, 220, 60)       # preview: the automatic mask (green) and the prediction (red)
PREDICTION_BGR = (40, 40, 240)


@dataclass(frozen=True)
class PretrainSource:
    """One ``--dataset NAME --root DIR`` pair."""

    dataset: str
    root: str | None
    modality: str = "flair"


@dataclass
class PretrainOptions:
    sources: Sequence[PretrainSource]
    split: str = "train"              # never "test": evaluation must not see its own cases
    slice_stride: int = 2             # every n-th slice (neighbours are near copies)
    max_cases: int | None = None      # the first n cases of the split per source (quick runs)
    split_file: str | None = None     # a user split, JSON {"train": [...], "test": [...]}
    masks: AutoMaskConfig = field(default_factory=AutoMaskConfig)
    preview_samples: int = 6


@dataclass
class PretrainResult:
    out: Path
    model: Path
    num_samples: int
    num_slices: int
    mask_seconds: float
    fit_seconds: float
    first_loss: float | None
    final_loss: float | None


def _data_key(opts: PretrainOptions, described: list[dict], cases: list[list[str]], img_size: int,
              seed: int) -> str:
    blob = json.dumps({"sources": described, "cases": cases, "split": opts.split, "split_file": opts.split_file,
                       "stride": opts.slice_stride, "max_cases": opts.max_cases, "masks": opts.masks.to_dict(),
                       "img_size": img_size, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class AutomaskSamples:
    """Every (slice, partition) sample cut from the chosen cases, before it is written."""

    images: list[np.ndarray] = field(default_factory=list)              # one float16 image per used slice
    samples: list[tuple[int, np.ndarray, dict]] = field(default_factory=list)  # (image index, region map, record)
    per_source: list[dict] = field(default_factory=list)


def reusable_dataset(info_path: Path, key: str) -> dict | None:
    """dataset.json of an automatic-mask folder built with the same inputs (`key`), else None."""
    if not info_path.exists():
        return None
    try:
        old = read_json(info_path)
    except DataError:
        return None
    return old if isinstance(old, dict) and old.get("build_key") == key else None


def cut_slices(sources: list, described: list[dict], cases: list[list[str]], opts: PretrainOptions,
               img_size: int, progress: bool) -> AutomaskSamples:
    """Resize every `slice_stride`-th slice of the cases and cut it into automatic partitions
    (images only: the label file is never opened)."""
    cut = AutomaskSamples()
    bar = tqdm(total=sum(len(c) for c in cases), desc="automatic masks", unit="case",
               dynamic_ncols=True) if progress else None
    try:
        for src, desc, ids in zip(sources, described, cases):
            counts = {}
            for case in ids:
                shape, chunks = src.image_chunks(case)
                used = 0
                for k0, block in chunks:
                    for k in range(k0, k0 + len(block)):
                        if k % opts.slice_stride:
                            continue
                        image = resize_image(block[k - k0], img_size)
                        maps = slice_partitions(image, opts.masks)
                        if not maps:
                            continue
                        cut.images.append(image.astype(np.float16))
                        for name, region_map in maps:
                            cut.samples.append((len(cut.images) - 1, region_map, {
                                "source": src.name, "case": case, "slice": k, "partition": name,
                                "regions": int(region_map.max())}))
                        used += 1
                counts[case] = {"slices": int(shape[0]), "used_slices": used}
                if bar is not None:
                    bar.update(1)
            cut.per_source.append({"source": desc, "split": opts.split, "cases": counts})
    finally:
        if bar is not None:
            bar.close()
    return cut


def write_automask_shards(folder: Path, cut: AutomaskSamples, order: np.ndarray) -> tuple[list[dict], list[dict]]:
    """The samples in `order` as Zarr shards of SHARD_SIZE under `folder`; (shard entries, records)."""
    entries, records = [], []
    for k, start in enumerate(range(0, len(order), SHARD_SIZE)):
        chunk = order[start:start + SHARD_SIZE]
        rel = shard_relpath(k, "zarr")
        with ShardWriter(folder / rel, fmt="zarr", capacity=len(chunk)) as writer:
            for j in chunk.tolist():
                img_index, region_map, rec = cut.samples[j]
                writer.add(cut.images[img_index], region_map, in_range=True)
                records.append({"id": f"{rec['source']}/{rec['case']}/{rec['slice']:03d}/{rec['partition']}",
                                "shard": k, "index": len(records) - start, **rec})
            result = writer.close()
        entries.append({"path": rel, "start": start, "count": len(chunk), "sha256": result.sha256,
                        "bytes": result.bytes})
    return entries, records


def build_automask_dataset(opts: PretrainOptions, out: Path, img_size: int, seed: int, *,
                           progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the automatic-mask shard dataset to `out` (an absent or stale folder is rebuilt).

    Returns the summary recorded under ``pretrain`` in config.json.
    """
    sources, described, cases = [], [], []
    for s in opts.sources:
        src = open_source(s.dataset, s.root, modality=s.modality)
        sources.append(src)
        described.append(src.describe())
        cases.append(resolve_split(src, opts.split, opts.split_file)[:opts.max_cases])
    key = _data_key(opts, described, cases, img_size, seed)
    old = reusable_dataset(out / "dataset.json", key)
    if old is not None:
        echo(f"automatic masks: reusing {out} ({old.get('num_samples')} samples)")
        return old["pretrain"]
    if out.exists():
        shutil.rmtree(out)

    t0 = time.perf_counter()
    cut = cut_slices(sources, described, cases, opts, img_size, progress)
    if not cut.samples:
        names = ", ".join(s.dataset for s in opts.sources)
        raise DataError(f"{names}: no slice has enough content for automatic masks "
                        f"(content threshold {opts.masks.content_threshold})")
    # A seeded random order: the trainer shuffles blocks of shards, so consecutive samples must
    # already mix cases, slices and partitions.
    order = np.random.default_rng([seed, _ORDER_STREAM]).permutation(len(cut.samples))
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    entries, records = write_automask_shards(tmp, cut, order)
    total_cases = sum(len(c) for c in cases)
    summary = {
        "sources": cut.per_source, "split": opts.split, "split_file": opts.split_file,
        "num_cases": total_cases, "num_slices": len(cut.images), "num_samples": len(cut.samples),
        "slice_stride": opts.slice_stride, "max_cases": opts.max_cases, "img_size": img_size,
        "masks": opts.masks.to_dict(), "order_seed": [seed, _ORDER_STREAM],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    info = {
        "schema_version": SCHEMA_VERSION, "tool_version": tool_version(), "kind": "automatic-masks",
        "format": "zarr", "image_dtype": "float16", "seed": seed,
        "source": described[0] if len(described) == 1 else {"name": "+".join(d["name"] for d in described),
                                                            "parts": described},
        # Region numbers are per-sample labels, not classes: the prompt sampler picks one region.
        "class_names": ["background"] + [f"region{i}" for i in range(1, 256)],
        "task": "multi", "fingerprint": None, "build_key": key, "pretrain": summary,
        "num_samples": len(cut.samples), "shards": entries,
    }
    (tmp / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_dataset(tmp, info, records)
    tmp.rename(out)
    echo(f"automatic masks: {len(cut.samples)} samples ({len(cut.images)} slices of {total_cases} cases, "
         f"{len(opts.masks.partitions)} partitions each) in {summary['seconds']:.1f} s -> {out}")
    return summary


def pretrain(cfg, opts: PretrainOptions, out: str | Path, *, resume: bool = False,
             overwrite: bool = False, progress: bool = True,
             echo: Callable[[str], None] = print) -> PretrainResult:
    """Pretrain the tiny SAM per `cfg` (a TrainConfig) on automatic masks; see the module doc."""
    if cfg.model != "tiny":
        raise ConfigError(f"train pretrain builds the tiny model only (got model {cfg.model!r})")
    if cfg.checkpoint is not None:
        raise ConfigError("train pretrain starts from random init; it takes no --checkpoint")
    if cfg.prompt != "point":
        raise ConfigError("train pretrain trains with point prompts (prompt 'point')")
    if opts.split not in ("train", "all"):
        raise ConfigError(f"--split {opts.split!r}: pretraining uses 'train' (default) or 'all', "
                          "never the test cases")
    if opts.max_cases is not None and opts.max_cases < 1:
        raise ConfigError(f"--max-cases must be >= 1, got {opts.max_cases}")
    if opts.slice_stride < 1:
        raise ConfigError(f"--slice-stride must be >= 1, got {opts.slice_stride}")
    if not opts.sources:
        raise ConfigError("give at least one --dataset NAME (with --root DIR)")
    out = Path(out)
    # Refuse (or clear) an existing run before spending minutes on masks.
    prepare_rundir(out, resume=resume, overwrite=overwrite)
    if overwrite:
        for name in (MODEL_FILE, PREVIEW_FILE):
            if (out / name).exists():
                (out / name).unlink()
        if (out / AUTOMASK_DIR).exists():
            shutil.rmtree(out / AUTOMASK_DIR)

    t0 = time.perf_counter()
    data_dir = out / AUTOMASK_DIR
    summary = build_automask_dataset(opts, data_dir, cfg.img_size, cfg.seed, progress=progress, echo=echo)
    mask_seconds = time.perf_counter() - t0

    result = fit(cfg, data_dir, out, resume=resume, overwrite=overwrite, progress=progress, echo=echo)

    model, run = load_trained_model(out)
    model_path = out / MODEL_FILE
    atomic_torch_save(model_path, {k: v.detach().cpu() for k, v in model.sam.state_dict().items()})
    run["pretrain"] = {**summary, "seed": cfg.seed, "model_file": MODEL_FILE,
                       "mask_seconds_this_invocation": round(mask_seconds, 1),
                       "fit_seconds_this_invocation": round(result.seconds, 1),
                       "threads": torch.get_num_threads()}
    write_run_json(out / CONFIG_FILE, run)
    write_preview(model, data_dir, out / PREVIEW_FILE, opts.preview_samples, cfg.seed)
    echo(f"pretrained model: {model_path} (full state dict of --model tiny at {cfg.img_size}px); "
         f"preview {out / PREVIEW_FILE}")
    return PretrainResult(out, model_path, summary["num_samples"], summary["num_slices"], mask_seconds,
                          result.seconds, result.first_loss, result.final_loss)


def write_preview(model, data_dir: Path, path: Path, count: int, seed: int) -> None:
    """PNG: rows of (automatic partition, prompted region + point, model prediction) panels."""
    ds = open_dataset(data_dir)
    rows = []
    for i in range(min(count, len(ds))):
        sample = ds[i]
        image = np.asarray(sample["image"], np.float32)
        regions = np.asarray(sample["label"])
        prompt = sample_training_prompt(regions, np.random.default_rng([seed, _PREVIEW_STREAM, i]))
        if prompt is None:
            continue
        _, (x, y), target = prompt
        with torch.no_grad():
            logits = model(torch.from_numpy(image)[None, None],
                           torch.tensor([[[float(x), float(y)]]]), torch.ones(1, 1, dtype=torch.long))
        pred = (logits[0, 0] > 0).numpy()
        dice = 2 * (pred & target.astype(bool)).sum() / max(1, pred.sum() + target.sum())
        rows.append(np.concatenate([
            _panel(image, sample["id"], regions=regions),
            _panel(image, "prompt + automatic mask (green)", target=target, point=(x, y)),
            _panel(image, f"prediction (red), Dice {100 * dice:.0f}%", target=target, pred=pred,
                   point=(x, y)),
        ], axis=1))
    if not rows:
        raise DataError(f"{data_dir}: no sample with regions for the preview")
    if not cv2.imwrite(str(path), np.concatenate(rows, axis=0)):
        raise OSError(f"{path}: cannot write PNG")


def _panel(image: np.ndarray, title: str, *, regions: np.ndarray | None = None,
           target: np.ndarray | None = None, pred: np.ndarray | None = None,
           point: tuple[int, int] | None = None, scale: int = 2) -> np.ndarray:
    h, w = image.shape
    gray = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8), (w * scale, h * scale),
                      interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if regions is not None:
        big = cv2.resize(regions, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        palette = np.array([(0, 0, 0)] + [CLASS_BGR[c % len(CLASS_BGR)] for c in range(255)], np.uint8)
        tint = palette[big]
        canvas = np.where(big[..., None] > 0, cv2.addWeighted(tint, 0.45, canvas, 0.55, 0), canvas)
    for mask, colour in ((target, TARGET_BGR), (pred, PREDICTION_BGR)):
        if mask is None:
            continue
        big = cv2.resize(mask.astype(np.uint8), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
    if point is not None:
        centre = (int((point[0] + 0.5) * scale), int((point[1] + 0.5) * scale))
        cv2.drawMarker(canvas, centre, POINT_BGR, cv2.MARKER_CROSS, 10, 2)
    bar = np.full((20, canvas.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, title[:40], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, canvas], axis=0)
