"""`train predict`: segment a new scan from clicked points with a trained run.

POINTS.json maps class names (the run's) to lists of voxel coordinates ``[i, j, k]`` in the
NIfTI's index space (i = column, j = row, k = slice, 0-based, as shown by ITK-SNAP / 3D Slicer
/ nibabel)::

    {"tumour": [[120, 96, 77], [118, 101, 78]]}
    {"liver": [[80, 60, 12]], "spleen": [[30, 70, 12], [32, 66, 13]]}

Every slice k holding at least one point is segmented: it is encoded once, and each class with
points on that slice is decoded from all its points on the slice (several points = several
positive clicks). Overlaps go to the class with the highest logit. Slices without points stay 0.
A run trained without prompts (``train fit --prompt none``) needs no points: every slice is
predicted. The scan is preprocessed exactly as the run's training data (the intensity preset
recorded with the run's dataset), and the mask is written as uint8 class indices with the
scan's affine and header.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shared.errors import ConfigError, DataError

from .evaluate import Inference, LoadedModel, combine_class_logits


def read_points(path: str | Path, class_names: Sequence[str], shape_ijk: Sequence[int]) -> dict[int, list[tuple[int, int, int]]]:
    """POINTS.json -> {class index: [(i, j, k), ...]}, validated against the run and the scan."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: points file not found")
    data = read_json(path, what="points file")
    if not isinstance(data, dict) or not data:
        raise DataError(f'{path}: expected an object like {{"{class_names[1]}": [[i, j, k], ...]}}')
    index = {name: c for c, name in enumerate(class_names) if c > 0}
    out: dict[int, list[tuple[int, int, int]]] = {}
    for name, pts in data.items():
        if name not in index:
            raise DataError(f"{path}: unknown class {name!r}; the run's classes are {', '.join(index)}")
        if not isinstance(pts, list) or not pts:
            raise DataError(f"{path}: class {name!r} needs a non-empty list of [i, j, k] points")
        for p in pts:
            if (not isinstance(p, (list, tuple)) or len(p) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
                raise DataError(f"{path}: class {name!r}: point {p!r} is not [i, j, k] (three numbers)")
            ijk = tuple(int(round(v)) for v in p)
            if any(v != round(v) for v in p):
                raise DataError(f"{path}: class {name!r}: point {p!r} must hold whole voxel indices")
            if not all(0 <= v < n for v, n in zip(ijk, shape_ijk)):
                raise DataError(f"{path}: class {name!r}: point {list(ijk)} is outside the scan "
                                f"(index space {tuple(int(n) for n in shape_ijk)})")
            out.setdefault(index[name], []).append(ijk)  # type: ignore[arg-type]
    return out


def run_intensity(run_config: dict, rundir: str | Path) -> dict:
    """The intensity preset the run's training data was made with (recorded with its dataset)."""
    source = (run_config.get("dataset") or {}).get("source") or {}
    preset = source.get("intensity")
    if not isinstance(preset, dict):
        raise DataError(f"{rundir}/config.json: the run does not record its dataset's intensity preset "
                        "(dataset.source.intensity); cannot preprocess a new scan like the training data")
    return preset


@dataclass
class PredictResult:
    out: Path
    slices: int
    voxels: dict  # class name -> predicted voxels
    seconds: float


def predict_scan(loaded: LoadedModel, rundir: str | Path, image: str | Path, points: str | Path | None,
                 out: str | Path, *, device: str = "auto", batch_size: int = 8,
                 overwrite: bool = False) -> PredictResult:
    """Segment ``image`` from the clicks in ``points``; write a uint8 label NIfTI to ``out``."""
    import time

    import nibabel as nib
    import torch

    from shared.sources import preprocess_raw, read_nifti
    from train.resize import scale_points

    t0 = time.perf_counter()
    out = Path(out)
    if not str(out).endswith((".nii", ".nii.gz")):
        raise ConfigError(f"--out {out}: give a NIfTI file name (*.nii.gz or *.nii)")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    class_names = loaded.class_names
    if not class_names:
        raise DataError(f"{rundir}/config.json: the run does not record its class names")
    preset = run_intensity(loaded.run_config, rundir)
    promptless = loaded.trained_prompt == "none"

    raw, img = read_nifti(image)
    shape_ijk = raw.shape[:3]
    vol = preprocess_raw(raw, preset, name=str(image))  # (S, R, C) = (k, j, i)
    S, H, W = vol.shape
    if points is None:
        if not promptless:
            raise ConfigError("--points POINTS.json is required: this run segments from clicked points")
        clicks: dict[int, list[tuple[int, int, int]]] = {}
    else:
        clicks = read_points(points, class_names, shape_ijk)

    from train.devices import pick_device

    dev = pick_device(device)
    loaded.model.to(dev).eval()
    inf = Inference(loaded.model, dev, batch_size)
    pred = np.zeros((S, H, W), np.uint8)
    # (slice k) -> {class: [(x, y), ...]} with x = i (column), y = j (row)
    per_slice: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for c, pts in clicks.items():
        for i, j, k in pts:
            per_slice.setdefault(k, {}).setdefault(c, []).append((i, j))
    todo = np.arange(S) if promptless else np.array(sorted(per_slice), dtype=np.int64)
    with torch.inference_mode():
        for b0 in range(0, len(todo), batch_size):
            ks = todo[b0:b0 + batch_size]
            emb = inf.encode(vol[ks])
            if promptless:
                pred[ks] = inf.decode_promptless(emb, (H, W))
                continue
            prompts = [(j, c, xy) for j, k in enumerate(ks) for c, xy in sorted(per_slice[int(k)].items())]
            logits: list[Any] = [None] * len(prompts)
            # decode prompts with the same number of points together (no padding points)
            for n in sorted({len(xy) for _, _, xy in prompts}):
                sel = [p for p, (_, _, xy) in enumerate(prompts) if len(xy) == n]
                pts = np.stack([scale_points(np.asarray(prompts[p][2], np.float64), (H, W), inf.img_size)
                                for p in sel]).astype(np.float32)
                res = inf.decode_prompts(emb, np.asarray([prompts[p][0] for p in sel], np.int64), pts,
                                         np.ones(pts.shape[:2], np.int64), (H, W))
                for p, r in zip(sel, res):
                    logits[p] = r
            for j, k in enumerate(ks):
                mine = [p for p, (o, _, _) in enumerate(prompts) if o == j]
                pred[k] = combine_class_logits([prompts[p][1] for p in mine],
                                               np.stack([logits[p] for p in mine]), (H, W))
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, len(class_names) - 1
    mask = nib.Nifti1Image(np.ascontiguousarray(pred.transpose(2, 1, 0)), img.affine, header)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{''.join(out.suffixes)}")
    try:
        nib.save(mask, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    voxels = {class_names[c]: int(np.count_nonzero(pred == c)) for c in range(1, len(class_names))}
    return PredictResult(out, len(todo), voxels, time.perf_counter() - t0)
