"""`train eval`: score a run (or zero-shot SAM) on test volumes with DSC and HD95.

Protocol (the paper's, after SAMed):
- Every slice is resized to the model's square input (``train.resize.resize_image``) and encoded
  ONCE; the embedding is reused for all prompts of that slice. Slices are encoded in batches.
- Prompted modes give one prompt per slice and per class present in that slice's ground
  truth: ``center`` = the pixel farthest from the class border (maximum of the distance transform
  inside the class), ``random`` = a uniformly drawn pixel of the class, seeded by
  (seed, volume, slice, class), ``box`` = the class's bounding box on the slice widened by
  ``box_margin`` source pixels per side, clipped to the slice (MedSAM's evaluation). A class
  absent from a slice's ground truth gets no prompt, hence
  no prediction there; slices without any ground-truth class are predicted empty without running
  the model.
- ``none`` (SAMed-style promptless runs) predicts every slice with all K+1 mask outputs and takes
  the arg-max.
- Prompted logits are upsampled back to the slice's size (``train.resize.upsample_logits``) and
  thresholded at 0; where two classes' masks overlap, the class with the highest logit wins.
- ``spacing`` (``--spacing MM``): slices are resampled to MM x MM pixels in-plane before all of
  the above (shared.spacing; prompts from the resampled ground truth) and the label maps resampled
  back (nearest) onto the volume's own grid, where they are scored and saved.
- Slices are stacked back into the volume at the source resolution and scored per volume and class
  (``train.metrics``); averages follow the published tables. HD95 in mm (or voxels:
  ``hd95_unit``; always voxels for sources without geometry), empty cases ``strict`` or ``samed``.
- ``keep`` (``--keep``, train.postprocess): ``all`` scores every predicted pixel (the paper's
  protocol); ``clicked-slice`` / ``clicked-volume`` first drop a class's regions that hold none of
  its clicks (per slice, or 3D-connected over the volume), on the grid the model predicted on.
- ``multimask`` (zero-shot SAM only): SAM's three masks per point, the one with the highest
  predicted IoU kept, as SAM is used with a single click.
"""
from __future__ import annotations

import heapq
import json
import shutil
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_text
from train import report
from train.devices import pick_device
from train.inference import Inference, LoadedModel, predict_slices
from train.metrics import (EMPTY_CASE_TEXT, EMPTY_CASES, HD95_UNITS, CaseScore, score_volume, slice_dice,
                           summarise)
from train.overlays import write_overlays
from train.postprocess import KEEP_MODES, keep_clicked
from train.prompts import Prompt, bounding_box, center_point, random_point
from train.testsets import EvalVolume, TestSet

PROMPT_MODES = ("center", "random", "box", "none")


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
    if mode == "center":
        return tuple(float(v) for v in center_point(mask))  # type: ignore[return-value]
    rng = np.random.default_rng([int(seed), int(vkey), int(k), int(c)])
    return tuple(float(v) for v in random_point(mask, rng))  # type: ignore[return-value]


def slice_prompts(label: np.ndarray, num_classes: int, mode: str, seed: int, vkey: int,
                  k: int, box_margin: float = 5.0) -> dict[int, Prompt]:
    """{class: Prompt}: one prompt per class present in ground-truth slice k (prompted modes)."""
    present = np.unique(label)
    classes = present[(present > 0) & (present <= num_classes)]
    if mode == "box":
        return {int(c): Prompt.around(bounding_box(label == c, box_margin)) for c in classes}
    return {int(c): Prompt.at(prompt_point(label == c, mode, seed, vkey, k, int(c))) for c in classes}


def predict_volume(inf: Inference, vol: EvalVolume, num_classes: int, prompt: str, seed: int,
                   progress: Callable[[int], None] | None = None,
                   prompts_out: dict | None = None, box_margin: float = 5.0) -> tuple[np.ndarray, int]:
    """Label map (S, R, C) for one volume and the number of slices run through the encoder.

    `prompts_out`, if given, receives {slice: [(class, Prompt), ...]} (at source resolution).
    """
    S, H, W = vol.label.shape
    pred = np.zeros((S, H, W), np.uint8)
    if prompt == "none":
        todo = np.arange(S)
    else:
        todo = np.flatnonzero(vol.label.reshape(S, -1).any(1))
    vkey = volume_key(vol.volume_id)
    for b0 in range(0, len(todo), inf.batch_size):
        ks = todo[b0:b0 + inf.batch_size]
        prompts = None
        if prompt != "none":
            prompts = [slice_prompts(vol.label[k], num_classes, prompt, seed, vkey, int(k), box_margin)
                       for k in ks]
            if prompts_out is not None:
                for k, per_class in zip(ks, prompts):
                    if per_class:
                        prompts_out[int(k)] = list(per_class.items())
        pred[ks] = predict_slices(inf, vol.image[ks], prompts)
        if progress is not None:
            progress(len(ks))
    return pred, len(todo)


def predict_on_grid(inf: Inference, vol: EvalVolume, num_classes: int, opts: "EvalOptions",
                    progress: Callable[[int], None] | None = None,
                    prompts_out: dict | None = None) -> tuple[np.ndarray, int]:
    """:func:`predict_volume` with the slices resampled to ``opts.spacing`` mm in-plane first
    (shared.spacing: prompts are placed on the resampled ground truth), and the label map resampled
    back (nearest, no class of a slice lost) onto the volume's own (S, R, C) grid; prompts in
    ``prompts_out`` are mapped back too. ``opts.spacing`` None: predict_volume itself."""
    from shared.spacing import map_points, resample_label, resample_volume

    work = resample_volume(vol, opts.spacing)
    found: dict = {}
    pred, n = predict_volume(inf, work, num_classes, opts.prompt, opts.seed, progress, found, opts.box_margin)
    if opts.keep != "all":
        pred = keep_clicked(pred, {k: {c: p.points_array() for c, p in items} for k, items in found.items()},
                            opts.keep)
    if work is vol:
        if prompts_out is not None:
            prompts_out.update(found)
        return pred, n
    hw, native_hw = work.label.shape[1:], vol.label.shape[1:]
    if prompts_out is not None:
        for k, items in found.items():
            prompts_out[k] = [(c, Prompt.around(map_points(np.reshape(p.box, (2, 2)), hw, native_hw).ravel())
                               if p.box is not None else Prompt.at(*map_points(p.points_array(), hw, native_hw)))
                              for c, p in items]
    return resample_label(pred, native_hw), n


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
    box_margin: float = 5.0  # prompt "box": source pixels added to each side of the class's box
    engine: str = "auto"  # image encoder engine on CPU (train.model.engines); auto: see encoder_engine
    embedding_cache: str | None = None  # keep each test slice's embedding on disk (train.embeddings.CachingEncoder)
    progress: bool = True  # a progress bar in slices (when stderr is a terminal)
    spacing: float | None = None  # in-plane mm the slices are resampled to before the model (None: native);
                                  # predictions go back to the volume's own grid, scored there
    keep: str = "all"  # train.postprocess.KEEP_MODES: drop predicted regions no click points at


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


def check_options(loaded: LoadedModel, testset: TestSet, opts: EvalOptions, where: str) -> str:
    """One-line errors for options that do not fit the model or the data; returns the HD95 unit."""
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
    if opts.spacing is not None and not testset.geometry_known:
        raise ConfigError(f"{where}: --spacing {opts.spacing:g}: the volumes carry no pixel spacing "
                          f"({testset.description.get('source', {}).get('name', 'source')}); evaluate natively")
    if opts.empty_case not in EMPTY_CASES:
        raise ConfigError(f"--empty-case {opts.empty_case!r} must be one of {', '.join(EMPTY_CASES)}")
    if opts.keep not in KEEP_MODES:
        raise ConfigError(f"--keep {opts.keep!r} must be one of {', '.join(KEEP_MODES)}")
    if opts.keep != "all" and opts.prompt not in ("center", "random"):
        raise ConfigError(f"--keep {opts.keep} keeps the regions that hold a click: it needs point "
                          f"prompts (--prompt center or random), not --prompt {opts.prompt}")
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
    return hd95_unit


@dataclass
class Scores:
    """What scoring the volumes produced (before the files are written)."""

    rows: list[CaseScore] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    worst: list[tuple] = field(default_factory=list)   # heap of the worst slices (overlays)
    slices: int = 0
    model_seconds: float = 0.0


def score_volumes(inf: Inference, testset: TestSet, opts: EvalOptions, hd95_unit: str, tmp: Path,
                  log: Callable[[str], None]) -> Scores:
    """Predict and score every test volume (up to max_volumes); predictions saved under `tmp`."""
    num_classes = len(testset.class_names) - 1
    scores, counter = Scores(), 0
    ids = testset.volume_ids[: opts.max_volumes] if opts.max_volumes else testset.volume_ids
    bar = tqdm(total=None, unit="slice", desc="eval", dynamic_ncols=True, file=sys.stderr,
               disable=None if opts.progress else True)
    for i, vid in enumerate(ids):
        vol = testset.load(vid)
        bar.set_description(f"eval {i + 1}/{len(ids)} {vid}")
        if not vol.label.any():
            log(f"warning: {vid}: no foreground in the ground truth, volume skipped (nothing to score)")
            scores.skipped.append(vid)
            continue
        if vol.label.max() > num_classes:
            raise DataError(f"{vid}: label value {int(vol.label.max())} is outside the "
                            f"dataset's {num_classes} classes")
        t0 = time.perf_counter()
        prompts: dict = {}
        pred, n = predict_on_grid(inf, vol, num_classes, opts, bar.update, prompts)
        scores.model_seconds += time.perf_counter() - t0
        scores.slices += n
        scores.rows.extend(score_volume(vid, pred, vol.label, vol.spacing, testset.class_names,
                                        hd95_unit=hd95_unit, empty_case=opts.empty_case))
        if opts.save_predictions:
            save_prediction(tmp / "predictions" / f"{vid}.nii.gz", pred, vol.affine)
        if opts.overlays > 0:
            counter = collect_worst(scores.worst, counter, opts.overlays, vol, pred, prompts)
    bar.close()
    return scores


def evaluate(loaded: LoadedModel, testset: TestSet, out: str | Path, opts: EvalOptions,
             *, where: str = "evaluation", log: Callable[[str], None] | None = None) -> dict:
    """Run the evaluation and write summary.json, cases.csv, table.md (+ predictions, overlays).

    Returns the summary dict. Volumes without any foreground are skipped with a warning (they
    hold nothing to score); if no volume is left, a DataError is raised.
    """
    from shared.spacing import spacing_record

    log = log or (lambda m: print(m, file=sys.stderr))
    hd95_unit = check_options(loaded, testset, opts, where)
    model = loaded.model
    out, tmp = prepare_outdir(out, opts.overwrite)
    ok = False
    threads = torch.get_num_threads()
    try:
        if opts.num_threads > 0:  # restored below: no process-wide side effect for API callers
            torch.set_num_threads(opts.num_threads)
        device = pick_device(opts.device)
        model.to(device).eval()
        inf = Inference(model, device, opts.batch_size, opts.decode_batch, opts.multimask,
                        encoder_engine(model, opts.engine, device, opts.embedding_cache))
        t_start = time.perf_counter()
        with torch.inference_mode():
            scores = score_volumes(inf, testset, opts, hd95_unit, tmp, log)
        if not scores.rows:
            raise DataError(f"{where}: no volume with foreground to score "
                            f"({len(scores.skipped)} volume(s) skipped: {', '.join(scores.skipped[:3])})")
        seconds = time.perf_counter() - t_start
        result = report.summary_dict(
            summarise(scores.rows, testset.class_names), task=testset.task, class_names=testset.class_names,
            method=loaded.name, prompt=opts.prompt, seed=opts.seed, model=loaded.info,
            run=loaded.info.get("run"), dataset=testset.description, skipped_volumes=scores.skipped,
            seconds=round(seconds, 3), slices=scores.slices,
            slices_per_s=round(scores.slices / scores.model_seconds, 3) if scores.model_seconds > 0 else None,
            device=str(device), hd95_unit=hd95_unit, empty_case=opts.empty_case,
            empty_case_convention=EMPTY_CASE_TEXT[opts.empty_case]
            + (" in mm" if hd95_unit == "mm" and opts.empty_case == "strict" else
               " in voxels" if opts.empty_case == "strict" else ""),
            multimask=opts.multimask, engine=getattr(inf.engine, "name", "torch"),
            spacing=spacing_record(opts.spacing), keep=opts.keep,
            **({"box_margin": opts.box_margin} if opts.prompt == "box" else {}))
        write_results(tmp, result, scores, loaded.name, testset.class_names, overlays=opts.overlays > 0)
        _finish_outdir(out, tmp)
        ok = True
        return result
    finally:
        torch.set_num_threads(threads)
        if not ok and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def encoder_engine(model, engine: str, device: torch.device, embedding_cache: str | None = None):
    """The train.model.engines runner of the model's image encoder for `engine` on CPU (None: torch
    eager, also on CUDA, where the model runs under autocast). "auto": the default engine for
    models whose input contract is MedSAM's (lite_medsam: exported once per weights, cached),
    torch eager for the others (tiny is fast in eager; a ViT export is large). With
    `embedding_cache` (CPU), every slice's embedding is kept there and reused by later runs on the
    same encoder (train.embeddings.CachingEncoder)."""
    runner = _engine_runner(model, engine, device)
    if embedding_cache is None or device.type != "cpu":
        return runner
    from train.embeddings import CachingEncoder, encoder_key

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_input(x)
    return CachingEncoder(runner or eager, embedding_cache, encoder_key(model))


def _engine_runner(model, engine: str, device: torch.device):
    if engine == "auto":
        engine = "torch" if getattr(model, "normalise", "sam") == "sam" else None
    if engine == "torch" or device.type != "cpu":
        return None
    from train.model.engines import default_engine, make_encoder_engine

    engine = engine or default_engine()

    return make_encoder_engine(model.sam.image_encoder, engine, img_size=model.img_size,
                               num_threads=torch.get_num_threads())


def write_results(folder: Path, result: dict, scores: Scores, method: str, class_names: Sequence[str],
                  *, overlays: bool = False) -> None:
    """summary.json, cases.csv, table.md (and overlays/) of an evaluation into `folder`."""
    atomic_write_text(folder / "summary.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(folder / "cases.csv", report.cases_csv(scores.rows))
    atomic_write_text(folder / "table.md", report.markdown_table([(method, result)]))
    if overlays:
        write_overlays(folder / "overlays", [p for _, _, p in sorted(scores.worst, reverse=True)], class_names)


def save_prediction(path: Path, pred: np.ndarray, affine: np.ndarray) -> None:
    """uint8 label NIfTI, array back in NIfTI (i, j, k) order, with the source affine."""
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


def collect_worst(heap: list, counter: int, n: int, vol: EvalVolume, pred: np.ndarray,
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
                               "pred": pred[k].copy(),
                               "points": [(c, *p.points[0]) for c, p in prompts.get(int(k), []) if p.box is None],
                               "boxes": [(c, *p.box) for c, p in prompts.get(int(k), []) if p.box is not None],
                               "affine": vol.affine})
        counter += 1
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)
    return counter
