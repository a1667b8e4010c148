"""`train eval`: score a run (or zero-shot SAM) on test volumes with DSC and HD95.

Protocol (the paper's, after SAMed):
- Every slice is resized to the model's square input (``train.resize.resize_image``) and encoded
  ONCE; the embedding is reused for all prompts of that slice. Slices are encoded in batches.
- Prompted modes give one positive point per slice and per class present in that slice's ground
  truth: ``center`` = the pixel farthest from the class border (maximum of the distance transform
  inside the class), ``random`` = a uniformly drawn pixel of the class, seeded by
  (seed, volume, slice, class). A class absent from a slice's ground truth gets no prompt, hence
  no prediction there; slices without any ground-truth class are predicted empty without running
  the model.
- ``none`` (SAMed-style promptless runs) predicts every slice with all K+1 mask outputs and takes
  the arg-max.
- Prompted logits are upsampled back to the slice's size (``train.resize.upsample_logits``) and
  thresholded at 0; where two classes' masks overlap, the class with the highest logit wins.
- Slices are stacked back into the volume at the source resolution and scored per volume and class
  (``train.metrics``); averages follow the published tables. HD95 in mm (or voxels:
  ``hd95_unit``; always voxels for sources without geometry), empty cases ``strict`` or ``samed``.
- ``multimask`` (zero-shot SAM only): SAM's three masks per point, the one with the highest
  predicted IoU kept, as SAM is used with a single click.
"""
from __future__ import annotations

import contextlib
import heapq
import json
import math
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from shared.errors import ConfigError, DataError
from shared.remote import is_remote

from . import report
from .metrics import (EMPTY_CASE_TEXT, EMPTY_CASES, HD95_UNITS, CaseScore, score_volume, slice_dice,
                      summarise)

PROMPT_MODES = ("center", "random", "none")


# --------------------------------------------------------------------------------------------
# Test volumes


@dataclass
class EvalVolume:
    """One test volume: arrays (S, R, C) at the source resolution and its geometry."""

    volume_id: str
    image: np.ndarray  # float32 (S, R, C) in [0, 1]
    label: np.ndarray  # uint8 (S, R, C)
    spacing: tuple[float, float, float]  # mm along (S, R, C)
    affine: np.ndarray  # 4x4 of the source NIfTI
    geometry_known: bool = True  # False: spacing is a 1 mm placeholder (transunet), HD95 in voxels


@dataclass
class TestSet:
    """Where the test volumes come from, and a lazy iterator over them."""

    description: dict  # what summary.json records under "dataset"
    class_names: tuple[str, ...]
    task: str
    volume_ids: list[str]
    load: Callable[[str], EvalVolume]
    geometry_known: bool = True  # False: the source has no voxel spacing (HD95 only in voxels)

    def __iter__(self) -> Iterator[EvalVolume]:
        for vid in self.volume_ids:
            yield self.load(vid)


def open_shards_testset(directory: str | Path) -> TestSet:
    """Packed test volumes written by `synth pack` (dataset.json with a ``volumes`` list)."""
    from shared import open_dataset

    ds = open_dataset(directory)
    volumes = ds.volumes
    if not volumes:
        raise DataError(f"{directory}: holds no packed volumes (kind {ds.kind!r}); "
                        "write test volumes with `synth pack --split test --out DIR`")
    by_id = {str(v["id"]): v for v in volumes}

    def load(vid: str) -> EvalVolume:
        v = by_id[vid]
        image, label = ds.volume_arrays(vid)
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label, dtype=np.uint8)
        slices = list(v.get("slices") or range(len(image)))
        shape = tuple(int(s) for s in v.get("shape") or image.shape)
        if len(slices) != shape[0]:  # a subset of slices was packed: rebuild the full volume
            full_i = np.zeros(shape, np.float32)
            full_l = np.zeros(shape, np.uint8)
            full_i[slices], full_l[slices] = image, label
            image, label = full_i, full_l
        return EvalVolume(vid, image, label, tuple(float(s) for s in v["spacing"]),
                          np.asarray(v["affine"], dtype=np.float64))

    source = ds.info.get("source") or {}
    path = directory if is_remote(directory) else str(Path(directory).resolve())
    description = {"kind": "shards", "path": path, "source": source}
    return TestSet(description, tuple(ds.class_names), ds.task, list(by_id), load,
                   geometry_known=source_geometry_known(source))


def source_geometry_known(source: dict) -> bool:
    """Whether a source (its describe() dict) has real voxel spacings.

    The TransUNet files keep no geometry (shared/sources/transunet.py reports 1 mm placeholders,
    ``meta["geometry_known"] = False``); packed shards keep only the source's description.
    """
    return source.get("geometry_known", source.get("name") != "transunet") is not False


def open_source_testset(dataset: str, root: str | Path | None, split: str, *, modality: str = "flair",
                        config: str | Path | None = None, intensity=None) -> TestSet:
    """Volumes read straight from a source folder through shared.sources / shared.splits
    (``intensity``: a preset replacing the source's, for brats and nifti)."""
    from shared.sources import open_source
    from shared.splits import resolve_split

    source = open_source(dataset, root, modality=modality, config=config, intensity=intensity)
    ids = list(resolve_split(source, split))
    if not ids:
        raise DataError(f"{dataset} source at {root}: split {split!r} holds no volumes")

    def load(vid: str) -> EvalVolume:
        vol = source.load(vid)
        return EvalVolume(vol.volume_id, np.asarray(vol.image, np.float32), np.asarray(vol.label, np.uint8),
                          tuple(float(s) for s in vol.spacing), np.asarray(vol.affine, np.float64))

    description = {"kind": "source", "split": split, "source": source.describe()}
    return TestSet(description, tuple(source.class_names), source.task, ids, load,
                   geometry_known=source_geometry_known(description["source"]))


# --------------------------------------------------------------------------------------------
# The model to evaluate


@dataclass
class LoadedModel:
    """A PromptSAM ready for inference plus what the report needs to say about it."""

    model: Any  # train.model.PromptSAM
    name: str  # the method name in table.md
    class_names: tuple[str, ...] | None  # None for zero-shot SAM: taken from the dataset
    trained_prompt: str | None  # "point" / "none" for runs, None for zero-shot
    info: dict = field(default_factory=dict)  # recorded under "model" in summary.json
    run_config: dict = field(default_factory=dict)  # RUNDIR/config.json ({} for zero-shot)


def load_zero_shot(model: str, checkpoint: str | Path | None, img_size: int | None = None) -> LoadedModel:
    """Zero-shot SAM (the paper's "SAM" rows): official weights, no LoRA, no training."""
    from train.model import MODEL_SPECS, PromptSAM, build_sam

    if model not in MODEL_SPECS:
        raise ConfigError(f"unknown --model {model!r}; choose one of {', '.join(MODEL_SPECS)}")
    size = int(img_size or MODEL_SPECS[model].checkpoint_img_size)
    sam = build_sam(model, checkpoint, size)
    info = {"model": model, "checkpoint": None if checkpoint is None else str(checkpoint),
            "img_size": size, "zero_shot": True}
    return LoadedModel(PromptSAM(sam).eval(), f"SAM ({model}, zero-shot)", None, None, info)


def load_run_model(rundir: str | Path, checkpoint: str | Path | None = None,
                   base_checkpoint: str | Path | None = None) -> LoadedModel:
    """A trained run (``RUNDIR/config.json`` + ``RUNDIR/checkpoints/last.pt`` or `checkpoint`).

    `base_checkpoint` overrides the official SAM weights path recorded in the run (vit_* runs
    only hold LoRA weights).
    """
    from train.checkpointing import CONFIG_FILE, last_checkpoint, load_trained_model

    rundir = Path(rundir)
    if not rundir.is_dir():
        raise DataError(f"--run {rundir}: run directory not found")
    if not (rundir / CONFIG_FILE).is_file():
        raise DataError(f"--run {rundir}: not a `train fit` run directory (no {CONFIG_FILE})")
    ckpt = Path(checkpoint) if checkpoint is not None else last_checkpoint(rundir)
    if not ckpt.is_file():
        raise DataError(f"--run {rundir}: no checkpoint at {ckpt} (has `train fit` written one yet?)")
    model, run = load_trained_model(rundir, ckpt, base_checkpoint)
    train_cfg = run.get("train", {})
    dataset = run.get("dataset") or {}
    names = dataset.get("class_names")
    info = {"run": str(rundir.resolve()), "checkpoint": str(ckpt.resolve()),
            "model": train_cfg.get("model"), "img_size": train_cfg.get("img_size"),
            "base_checkpoint": str(base_checkpoint) if base_checkpoint else train_cfg.get("checkpoint"),
            "lora_rank": train_cfg.get("lora_rank"), "trained_prompt": train_cfg.get("prompt"),
            "zero_shot": False}
    return LoadedModel(model.eval(), rundir.resolve().name, tuple(names) if names else None,
                       train_cfg.get("prompt"), info, run)


def check_classes(loaded: LoadedModel, testset: TestSet, where: str) -> None:
    """The run's classes must be the dataset's (same names, same order)."""
    if loaded.class_names is None:
        return
    if tuple(loaded.class_names) != tuple(testset.class_names):
        raise DataError(f"{where}: the dataset's classes {list(testset.class_names)} do not match the "
                        f"run's classes {list(loaded.class_names)}")


# --------------------------------------------------------------------------------------------
# Prompts and per-volume prediction


def volume_key(volume_id: str) -> int:
    """A stable 32-bit number for a volume id (seeds must not depend on Python's hash salt)."""
    return zlib.crc32(volume_id.encode("utf-8"))


def prompt_point(mask: np.ndarray, mode: str, seed: int, vkey: int, k: int, c: int) -> tuple[float, float]:
    """(x, y) pixel of one class mask of slice k for a prompted mode."""
    from train.prompts import center_point, random_point

    if mode == "center":
        return tuple(float(v) for v in center_point(mask))  # type: ignore[return-value]
    rng = np.random.default_rng([int(seed), int(vkey), int(k), int(c)])
    return tuple(float(v) for v in random_point(mask, rng))  # type: ignore[return-value]


@dataclass
class Inference:
    """Batched inference settings and the torch context they imply."""

    model: Any
    device: Any
    batch_size: int = 8  # slices per encoder call
    decode_batch: int = 64  # prompts per decoder call
    multimask: bool = False  # SAM's three masks per prompt, keep the best predicted IoU

    @property
    def img_size(self) -> int:
        return int(self.model.img_size)

    def autocast(self):
        import torch

        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, slices: np.ndarray):
        """(B, h, w) float32 slices -> embeddings on the device."""
        import torch

        from train.resize import resize_image

        s = self.img_size
        batch = np.stack([resize_image(im, s) for im in slices]).astype(np.float32, copy=False)
        x = torch.from_numpy(batch).unsqueeze(1).to(self.device)
        with self.autocast():
            return self.model.encode(x)

    def decode_prompts(self, embeddings, emb_index: np.ndarray, points: np.ndarray,
                       labels: np.ndarray, hw: tuple[int, int]):
        """Logits (P, h, w) float32 numpy for P prompts (points (P, N, 2) at model scale)."""
        import torch

        from train.resize import upsample_logits

        out = []
        for i in range(0, len(emb_index), self.decode_batch):
            sel = torch.from_numpy(emb_index[i:i + self.decode_batch]).to(self.device)
            pts = torch.from_numpy(points[i:i + self.decode_batch]).float().to(self.device)
            lab = torch.from_numpy(labels[i:i + self.decode_batch]).long().to(self.device)
            with self.autocast():
                logits = self.model.decode(embeddings[sel], pts, lab, multimask=self.multimask)
            out.append(upsample_logits(logits.float(), hw)[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, *hw), np.float32)

    def decode_promptless(self, embeddings, hw: tuple[int, int]) -> np.ndarray:
        """Arg-max label maps (B, h, w) of the K+1 promptless outputs."""
        import torch

        from train.resize import upsample_logits

        with self.autocast():
            logits = self.model.decode_promptless(embeddings)
        return upsample_logits(logits.float(), hw).argmax(1).to(torch.uint8).cpu().numpy()


def combine_class_logits(classes: Sequence[int], logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Per-class logits (n, h, w) -> label map: class with the highest logit where it is > 0."""
    pred = np.zeros(hw, np.uint8)
    if len(classes) == 0:
        return pred
    best = logits.argmax(0)
    fg = logits.max(0) > 0
    pred[fg] = np.asarray(classes, np.uint8)[best[fg]]
    return pred


def predict_volume(inf: Inference, vol: EvalVolume, num_classes: int, prompt: str, seed: int,
                   progress: Callable[[int], None] | None = None,
                   prompts_out: dict | None = None) -> tuple[np.ndarray, int]:
    """Label map (S, R, C) for one volume and the number of slices run through the encoder.

    `prompts_out`, if given, receives {slice: [(class, x, y), ...]} (points at source resolution).
    """
    import torch

    from train.resize import scale_points

    S, H, W = vol.label.shape
    pred = np.zeros((S, H, W), np.uint8)
    if prompt == "none":
        todo = np.arange(S)
    else:
        todo = np.flatnonzero(vol.label.reshape(S, -1).any(1))
    vkey = volume_key(vol.volume_id)
    for b0 in range(0, len(todo), inf.batch_size):
        ks = todo[b0:b0 + inf.batch_size]
        emb = inf.encode(vol.image[ks])
        if prompt == "none":
            pred[ks] = inf.decode_promptless(emb, (H, W))
        else:
            emb_idx, pts, owners = [], [], []
            for j, k in enumerate(ks):
                present = np.unique(vol.label[k])
                for c in present[(present > 0) & (present <= num_classes)]:
                    xy = prompt_point(vol.label[k] == c, prompt, seed, vkey, int(k), int(c))
                    if prompts_out is not None:
                        prompts_out.setdefault(int(k), []).append((int(c), *xy))
                    emb_idx.append(j)
                    pts.append(scale_points(np.asarray([xy], np.float64), (H, W), inf.img_size))
                    owners.append((j, int(c)))
            if owners:
                points = np.stack(pts).astype(np.float32).reshape(len(owners), 1, 2)
                logits = inf.decode_prompts(emb, np.asarray(emb_idx, np.int64), points,
                                            np.ones((len(owners), 1), np.int64), (H, W))
                for j, k in enumerate(ks):
                    mine = [i for i, (o, _) in enumerate(owners) if o == j]
                    pred[k] = combine_class_logits([owners[i][1] for i in mine], logits[mine], (H, W))
        del emb
        if progress is not None:
            progress(len(ks))
    return pred, len(todo)


# --------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class EvalOptions:
    prompt: str = "center"
    seed: int = 0
    batch_size: int = 8
    decode_batch: int = 64
    device: str = "auto"
    save_predictions: bool = False
    overlays: int = 0  # number of worst-slice PNGs (0 = none)
    overwrite: bool = False
    num_threads: int = 0
    max_volumes: int | None = None  # evaluate only the first N volumes (smoke tests)
    hd95_unit: str | None = None  # "mm" | "voxel"; None: mm, or voxels when the source has no geometry
    empty_case: str = "strict"  # "strict" | "samed" (train.metrics)
    multimask: bool = False  # zero-shot SAM: three masks per point, keep the best predicted IoU


def prepare_outdir(out: str | Path, overwrite: bool) -> tuple[Path, Path]:
    """(final dir, temporary dir). Results go to the temporary dir, renamed at the end."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise ConfigError(f"--out {out}: directory exists and is not empty (use --overwrite "
                                  "to replace a previous evaluation)")
            if not (out / "summary.json").exists():
                raise ConfigError(f"--out {out}: not a previous evaluation (no summary.json); "
                                  "refusing to replace it")
    tmp = out.parent / f".{out.name}.partial"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    return out, tmp


def _finish_outdir(out: Path, tmp: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def evaluate(loaded: LoadedModel, testset: TestSet, out: str | Path, opts: EvalOptions,
             *, where: str = "evaluation", log: Callable[[str], None] | None = None) -> dict:
    """Run the evaluation and write summary.json, cases.csv, table.md (+ predictions, overlays).

    Returns the summary dict. Volumes without any foreground are skipped with a warning (they
    hold nothing to score); if no volume is left, a DataError is raised.
    """
    import torch
    from tqdm import tqdm

    log = log or (lambda m: print(m, file=sys.stderr))
    if opts.prompt not in PROMPT_MODES:
        raise ConfigError(f"--prompt {opts.prompt!r} must be one of {', '.join(PROMPT_MODES)}")
    if opts.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {opts.batch_size}")
    check_classes(loaded, testset, where)
    num_classes = len(testset.class_names) - 1
    hd95_unit = opts.hd95_unit or ("mm" if testset.geometry_known else "voxel")
    if hd95_unit not in HD95_UNITS:
        raise ConfigError(f"--hd95-unit {hd95_unit!r} must be one of {', '.join(HD95_UNITS)}")
    if hd95_unit == "mm" and not testset.geometry_known:
        raise ConfigError(f"{where}: the volumes carry no voxel spacing "
                          f"({testset.description.get('source', {}).get('name', 'source')}), HD95 "
                          "can only be given in voxels: use --hd95-unit voxel")
    if opts.empty_case not in EMPTY_CASES:
        raise ConfigError(f"--empty-case {opts.empty_case!r} must be one of {', '.join(EMPTY_CASES)}")
    if opts.multimask and (opts.prompt == "none" or loaded.trained_prompt is not None):
        raise ConfigError(f"{where}: --multimask is for zero-shot SAM with point prompts (a trained run "
                          "learned the single-mask output)")
    model = loaded.model
    if opts.prompt == "none":
        if model.num_classes is None:
            raise ConfigError(f"{where}: --prompt none needs a promptless run (train fit --prompt none); "
                              "this model takes point prompts, use --prompt center or random")
        if model.num_classes != num_classes:
            raise DataError(f"{where}: the model predicts {model.num_classes} classes, the dataset has "
                            f"{num_classes} ({', '.join(testset.class_names[1:])})")
    elif loaded.trained_prompt == "none":
        raise ConfigError(f"{where}: the run was trained without prompts (prompt none); "
                          "evaluate it with --prompt none")

    out, tmp = prepare_outdir(out, opts.overwrite)
    ok = False
    threads = torch.get_num_threads()
    try:
        if opts.num_threads > 0:  # restored below: no process-wide side effect for API callers
            torch.set_num_threads(opts.num_threads)
        from train.devices import pick_device

        device = pick_device(opts.device)
        model.to(device).eval()
        inf = Inference(model, device, opts.batch_size, opts.decode_batch, opts.multimask)
        rows: list[CaseScore] = []
        skipped: list[str] = []
        worst: list[tuple] = []  # heap of (-badness, counter, payload) for overlays
        counter = 0
        n_slices = 0
        model_seconds = 0.0
        t_start = time.perf_counter()
        ids = testset.volume_ids[: opts.max_volumes] if opts.max_volumes else testset.volume_ids
        bar = tqdm(total=None, unit="slice", desc="eval", dynamic_ncols=True, file=sys.stderr,
                   disable=None)
        with torch.inference_mode():
            for i, vid in enumerate(ids):
                vol = testset.load(vid)
                bar.set_description(f"eval {i + 1}/{len(ids)} {vid}")
                if not vol.label.any():
                    log(f"warning: {vid}: no foreground in the ground truth, volume skipped (nothing to score)")
                    skipped.append(vid)
                    continue
                if vol.label.max() > num_classes:
                    raise DataError(f"{vid}: label value {int(vol.label.max())} is outside the "
                                    f"dataset's {num_classes} classes")
                t0 = time.perf_counter()
                prompts: dict = {}
                pred, n = predict_volume(inf, vol, num_classes, opts.prompt, opts.seed, bar.update, prompts)
                model_seconds += time.perf_counter() - t0
                n_slices += n
                rows.extend(score_volume(vid, pred, vol.label, vol.spacing, testset.class_names,
                                         hd95_unit=hd95_unit, empty_case=opts.empty_case))
                if opts.save_predictions:
                    _save_prediction(tmp / "predictions" / f"{vid}.nii.gz", pred, vol.affine)
                if opts.overlays > 0:
                    counter = _collect_worst(worst, counter, opts.overlays, vol, pred, prompts)
        bar.close()
        if not rows:
            raise DataError(f"{where}: no volume with foreground to score "
                            f"({len(skipped)} volume(s) skipped: {', '.join(skipped[:3])})")
        seconds = time.perf_counter() - t_start
        summary = summarise(rows, testset.class_names)
        result = report.summary_dict(
            summary, task=testset.task, class_names=testset.class_names,
            method=loaded.name, prompt=opts.prompt, seed=opts.seed, model=loaded.info,
            run=loaded.info.get("run"), dataset=testset.description, skipped_volumes=skipped,
            seconds=round(seconds, 3), slices=n_slices,
            slices_per_s=round(n_slices / model_seconds, 3) if model_seconds > 0 else None,
            device=str(device), hd95_unit=hd95_unit, empty_case=opts.empty_case,
            empty_case_convention=EMPTY_CASE_TEXT[opts.empty_case]
            + (" in mm" if hd95_unit == "mm" and opts.empty_case == "strict" else
               " in voxels" if opts.empty_case == "strict" else ""),
            multimask=opts.multimask)
        (tmp / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "cases.csv").write_text(report.cases_csv(rows))
        (tmp / "table.md").write_text(report.markdown_table([(loaded.name, result)]))
        if opts.overlays > 0:
            from .overlays import write_overlays

            write_overlays(tmp / "overlays", [p for _, _, p in sorted(worst, reverse=True)],
                           testset.class_names)
        _finish_outdir(out, tmp)
        ok = True
        return result
    finally:
        torch.set_num_threads(threads)
        if not ok and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _save_prediction(path: Path, pred: np.ndarray, affine: np.ndarray) -> None:
    """uint8 label NIfTI, array back in NIfTI (i, j, k) order, with the source affine."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(pred.transpose(2, 1, 0)), np.asarray(affine, np.float64))
    img.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


# Worst-slice overlays skip slivers: a slice whose ground truth covers less than this share of the
# volume's largest ground-truth slice, or fewer pixels than the floor, is not a candidate (a
# few-pixel tumour end scores Dice 0 easily and says little about the model).
WORST_MIN_SHARE = 0.2
WORST_MIN_PIXELS = 25


def _collect_worst(heap: list, counter: int, n: int, vol: EvalVolume, pred: np.ndarray,
                   prompts: dict) -> int:
    """Keep the n slices with the lowest foreground Dice among slices of real size (see
    WORST_MIN_SHARE; all slices if none qualifies); ties: larger ground truth first."""
    d = slice_dice(pred, vol.label)
    gt_area = (vol.label > 0).reshape(len(d), -1).sum(1)
    scored = ~np.isnan(d)
    big = scored & (gt_area >= max(WORST_MIN_PIXELS, WORST_MIN_SHARE * int(gt_area.max(initial=0))))
    for k in np.flatnonzero(big if big.any() else scored):
        # heap holds the n worst so far; its root is the best of them (highest badness key first)
        key = (-float(d[k]), int(gt_area[k]))
        item = (key, counter, {"volume": vol.volume_id, "slice": int(k), "dice": float(d[k]),
                               "image": vol.image[k].copy(), "label": vol.label[k].copy(),
                               "pred": pred[k].copy(), "points": prompts.get(int(k), []),
                               "affine": vol.affine})
        counter += 1
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)
    return counter
