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

import gzip
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_writer, read_json
from shared.sources import preprocess_raw, read_nifti
from train.devices import pick_device
from train.inference import Inference, LoadedModel, predict_slices


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


def clicks_by_slice(clicks: dict[int, list[tuple[int, int, int]]]) -> dict[int, dict[int, np.ndarray]]:
    """{class: [(i, j, k), ...]} -> {slice k: {class: [[x, y], ...]}} with x = i (column), y = j (row)."""
    per_slice: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for c, pts in clicks.items():
        for i, j, k in pts:
            per_slice.setdefault(k, {}).setdefault(c, []).append((i, j))
    return {k: {c: np.asarray(xy, np.float64) for c, xy in per.items()} for k, per in per_slice.items()}


def write_label_nifti(out: Path, pred: np.ndarray, img, num_labels: int) -> None:
    """uint8 label map (S, R, C) as a NIfTI in the scan's (i, j, k) order with its affine and
    header, written atomically (shared.fileio)."""
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, num_labels - 1
    mask = nib.Nifti1Image(np.ascontiguousarray(pred.transpose(2, 1, 0)), img.affine, header)
    with atomic_writer(out) as fh:
        if str(out).endswith(".gz"):
            # the gzip stream nib.save writes (level 1, no name, mtime 0): the same bytes
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=1, mtime=0) as gz:
                mask.to_file_map({"image": nib.FileHolder(fileobj=gz), "header": nib.FileHolder(fileobj=gz)})
        else:
            mask.to_file_map({"image": nib.FileHolder(fileobj=fh), "header": nib.FileHolder(fileobj=fh)})


def predict_scan(loaded: LoadedModel, rundir: str | Path, image: str | Path, points: str | Path | None,
                 out: str | Path, *, device: str = "auto", batch_size: int = 8,
                 overwrite: bool = False) -> PredictResult:
    """Segment ``image`` from the clicks in ``points``; write a uint8 label NIfTI to ``out``."""
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
    vol = preprocess_raw(raw, preset, name=str(image))  # (S, R, C) = (k, j, i)
    if points is None and not promptless:
        raise ConfigError("--points POINTS.json is required: this run segments from clicked points")
    per_slice = {} if points is None else clicks_by_slice(read_points(points, class_names, raw.shape[:3]))

    dev = pick_device(device)
    loaded.model.to(dev).eval()
    inf = Inference(loaded.model, dev, batch_size)
    pred = np.zeros(vol.shape, np.uint8)
    todo = np.arange(len(vol)) if promptless else np.array(sorted(per_slice), dtype=np.int64)
    with torch.inference_mode():
        for b0 in range(0, len(todo), batch_size):
            ks = todo[b0:b0 + batch_size]
            pred[ks] = predict_slices(inf, vol[ks], None if promptless else [per_slice[int(k)] for k in ks])
    write_label_nifti(out, pred, img, len(class_names))
    voxels = {class_names[c]: int(np.count_nonzero(pred == c)) for c in range(1, len(class_names))}
    return PredictResult(out, len(todo), voxels, time.perf_counter() - t0)
