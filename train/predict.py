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

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from shared.errors import ConfigError, DataError
from shared.fileio import read_json
from shared.sources import preprocess_raw, read_nifti
from shared.spacing import spacing_record
from train.devices import pick_device
from train.inference import Inference, LoadedModel, predict_slices
from train.postprocess import keep_clicked
from train.prediction_files import check_outdir, write_label_nifti, write_prediction


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
    spacing: float | None = None  # in-plane mm the scan was resampled to for the model (None: as stored)


def clicks_by_slice(clicks: dict[int, list[tuple[int, int, int]]]) -> dict[int, dict[int, np.ndarray]]:
    """{class: [(i, j, k), ...]} -> {slice k: {class: [[x, y], ...]}} with x = i (column), y = j (row)."""
    per_slice: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for c, pts in clicks.items():
        for i, j, k in pts:
            per_slice.setdefault(k, {}).setdefault(c, []).append((i, j))
    return {k: {c: np.asarray(xy, np.float64) for c, xy in per.items()} for k, per in per_slice.items()}


def run_spacing(run_config: dict, spacing: Any = "run") -> float | None:
    """The in-plane spacing a scan is resampled to: ``spacing`` (mm, or "native" / None) when given,
    else ("run") the one the run's training data was built at (``dataset.source.options.spacing``;
    none recorded, or no run: native)."""
    from shared.spacing import parse_spacing

    if not (isinstance(spacing, str) and spacing == "run"):
        return parse_spacing(spacing)
    source = ((run_config or {}).get("dataset") or {}).get("source") or {}
    return parse_spacing((source.get("options") or {}).get("spacing"), "the run's dataset.source.options.spacing")


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """(S, R, C) voxel size in mm of a volume with this (i, j, k) affine (column lengths)."""
    lengths = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return float(lengths[2]), float(lengths[1]), float(lengths[0])


def resampled_scan(vol: np.ndarray, affine: np.ndarray, mm: float | None) -> np.ndarray:
    """A preprocessed scan (S, R, C) resampled to ``mm`` in-plane (shared.spacing); None: as is."""
    from shared.spacing import resample_image, target_geometry

    if mm is None:
        return vol
    out_hw = target_geometry(vol.shape, affine_spacing(affine), affine, mm)[0]
    return resample_image(vol, out_hw)


def predict_scan(loaded: LoadedModel, rundir: str | Path, image: str | Path, points: str | Path | None,
                 out: str | Path, *, device: str = "auto", batch_size: int = 8,
                 overwrite: bool = False, spacing: Any = "run", keep: str = "all") -> PredictResult:
    """Segment ``image`` from the clicks in ``points``; write a uint8 label NIfTI to ``out``.
    ``keep`` (train.postprocess.KEEP_MODES): drop predicted regions no click points at."""
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
    native = preprocess_raw(raw, preset, name=str(image))  # (S, R, C) = (k, j, i)
    if points is None and not promptless:
        raise ConfigError("--points POINTS.json is required: this run segments from clicked points")
    if promptless and keep != "all":
        raise ConfigError(f"--keep {keep} keeps the regions that hold a click: this run is promptless")
    per_slice = {} if points is None else clicks_by_slice(read_points(points, class_names, raw.shape[:3]))
    mm = run_spacing(loaded.run_config, spacing)
    vol = resampled_scan(native, np.asarray(img.affine), mm)
    if vol is not native:  # clicks onto the resampled grid
        from shared.spacing import map_points

        per_slice = {k: {c: map_points(xy, native.shape[1:], vol.shape[1:]) for c, xy in d.items()}
                     for k, d in per_slice.items()}

    dev = pick_device(device)
    loaded.model.to(dev).eval()
    inf = Inference(loaded.model, dev, batch_size)
    pred = np.zeros(vol.shape, np.uint8)
    todo = np.arange(len(vol)) if promptless else np.array(sorted(per_slice), dtype=np.int64)
    with torch.inference_mode():
        for b0 in range(0, len(todo), batch_size):
            ks = todo[b0:b0 + batch_size]
            pred[ks] = predict_slices(inf, vol[ks], None if promptless else [per_slice[int(k)] for k in ks])
    pred = keep_clicked(pred, per_slice, keep)  # on the grid the clicks and the model share
    if vol is not native:  # the mask on the scan's own grid
        from shared.spacing import resample_label

        pred = resample_label(pred, native.shape[1:])
    write_label_nifti(out, pred, img, len(class_names))
    voxels = {class_names[c]: int(np.count_nonzero(pred == c)) for c in range(1, len(class_names))}
    return PredictResult(out, len(todo), voxels, time.perf_counter() - t0, mm)


# ------------------------------------------------------------------ --input / --prompts (issue 31)
# zero-shot models whose input contract names no preset for the modality: the dicom source's defaults
ZERO_SHOT_PRESETS = {"ct": "ct-abdomen", "mr": "mri-slice-minmax"}
DICOM_MODALITIES = {"CT": "ct", "MR": "mr"}
PROMPT_MODELS_FOLLOWING_BOXES = ("box", "mixed")  # runs trained with these prompts get boxes


@dataclass
class ScanInput:
    """A scan to segment: a DICOM series folder or a NIfTI file, in NIfTI order with its RAS affine."""

    path: Path
    kind: str  # "dicom" or "nifti"
    raw: np.ndarray  # (i, j, k)
    affine: np.ndarray  # 4x4 RAS
    name: str  # the outputs' <name>
    modality: str | None  # "ct" / "mr" when known (DICOM Modality tag)
    series: object = None  # shared.sources.dicom.DicomSeries for DICOM
    image: object = None  # the nibabel image for NIfTI


def scan_name(path: str | Path) -> str:
    """<name> of the outputs: the NIfTI file name without .nii(.gz), or the DICOM folder's name."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.resolve().name


def read_input(path: str | Path, series_uid: str | None = None) -> ScanInput:
    """`--input`: a DICOM series folder (``--series UID`` picks one of several) or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        from shared.sources.dicom import read_dicom_series

        raw, affine, series = read_dicom_series(path, series_uid)
        modality = DICOM_MODALITIES.get(str(series.modality).upper())
        return ScanInput(path, "dicom", raw, affine, scan_name(path), modality, series=series)
    if series_uid is not None:
        raise ConfigError(f"--series {series_uid}: only for a DICOM folder; --input {path} is a file")
    if not str(path).endswith((".nii", ".nii.gz")):
        raise DataError(f"--input {path}: expected a DICOM series folder or a NIfTI file (*.nii.gz or *.nii)")
    raw, img = read_nifti(path)
    return ScanInput(path, "nifti", raw, np.asarray(img.affine, np.float64), scan_name(path), None, image=img)


def choose_intensity(loaded: LoadedModel, scan: ScanInput, *, intensity: str | dict | None = None,
                     modality: str | None = None, rundir: str | Path | None = None) -> dict:
    """The preset the scan is preprocessed with: ``--intensity``; else with a run the preset its
    training data recorded; else (zero-shot) the model's input-contract preset for the modality
    (``--modality``, else the DICOM Modality tag CT / MR), else the dicom source's default for it
    (ct-abdomen / mri-slice-minmax). A zero-shot NIfTI needs --modality or --intensity."""
    from shared.intensity import parse_preset_option, validate_preset

    if intensity is not None:
        return validate_preset(parse_preset_option(intensity) if isinstance(intensity, str) else intensity,
                               "--intensity")
    if loaded.run_config:
        return run_intensity(loaded.run_config, rundir or loaded.info.get("run", "--run"))
    modality = modality or scan.modality
    if modality is None:
        what = "a NIfTI file says nothing of it" if scan.kind == "nifti" else \
            f"the series' Modality is {scan.series.modality or 'empty'!r}"  # type: ignore[union-attr]
        raise ConfigError(f"--input {scan.path}: give --modality ct|mr (the zero-shot model's intensity preset "
                          f"depends on it; {what}) or --intensity PRESET")
    contract = (loaded.info.get("input_contract") or {}).get("intensity") or {}
    return validate_preset(contract.get(modality) or ZERO_SHOT_PRESETS[modality], f"--modality {modality}")


def follows_boxes(loaded: LoadedModel) -> bool:
    """Whether the model is prompted with boxes (zero-shot LiteMedSAM, runs trained with box or
    mixed prompts): then propagation follows a structure with boxes even from a clicked seed."""
    if loaded.trained_prompt is not None:
        return loaded.trained_prompt in PROMPT_MODELS_FOLLOWING_BOXES
    return loaded.info.get("model") == "lite_medsam"


def seeds_from_prompts(prompt_file, box_model: bool):
    """The prompt file's prompts -> train.propagate.Seed (one per class and slice): clicks of one class
    on one slice are one prompt (several positive clicks); a second box, or a box and clicks, of one
    class on one slice is a one-line DataError."""
    from train.prompts import Prompt
    from train.propagate import Seed

    grouped: dict[tuple[int, int], list] = {}
    for p in prompt_file.prompts:
        grouped.setdefault((p.class_index, p.slice_index), []).append(p)
    seeds = []
    for (c, k), group in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        kinds = {p.kind for p in group}
        if "box" in kinds and len(group) > 1:
            numbers = ", ".join(str(p.number) for p in group)
            raise DataError(f"{prompt_file.path}: prompts {numbers}: class {group[0].class_name!r} has "
                            f"{'two boxes' if kinds == {'box'} else 'a box and clicks'} on slice {k}; give one "
                            "box per class and slice (or clicks only)")
        if kinds == {"box"}:
            prompt = Prompt.around(group[0].box)
        else:
            prompt = Prompt.at(*[p.point for p in group])
        follow = "box" if (kinds == {"box"} or box_model) else "point"
        seeds.append(Seed(c, k, prompt, follow))
    return seeds


class SliceEmbeddings:
    """Slice k's embedding on demand, kept until released (train.propagate's `logits` / `release`).

    `upcoming`: slices in the order they will be asked for (without propagation): a missing slice is
    encoded together with the next ones, up to ``inf.batch_size`` per encoder call."""

    def __init__(self, inf: Inference, volume: np.ndarray, upcoming: Sequence[int] = ()):
        self.inf, self.volume = inf, volume
        self.cache: dict[int, object] = {}
        self.upcoming = [int(k) for k in upcoming]
        self.encoded = 0
        self.peak = 0

    def embedding(self, k: int):
        if k not in self.cache:
            ks = [k]
            if k in self.upcoming:
                at = self.upcoming.index(k)
                ks = [j for j in self.upcoming[at:at + self.inf.batch_size] if j not in self.cache]
            emb = self.inf.encode(self.volume[ks])
            for n, j in enumerate(ks):
                self.cache[j] = emb[n:n + 1]
            self.encoded += len(ks)
            self.peak = max(self.peak, len(self.cache))
        return self.cache[k]

    def logits(self, k: int, prompts) -> np.ndarray:
        from train.inference import prompt_logits

        return prompt_logits(self.inf, self.embedding(k), [0] * len(prompts), prompts, self.volume.shape[1:])

    def release(self, k: int) -> None:
        self.cache.pop(k, None)


@dataclass
class VolumePrediction:
    files: dict  # suffix -> Path written
    labels: np.ndarray  # (S, R, C) uint8
    class_names: tuple  # labels 1..N
    voxels: dict  # class name -> voxels
    extents: dict  # class name -> [first, last] slice segmented
    encoded: int  # slices encoded
    seconds: float
    intensity: dict
    spacing: Any = "native"  # in-plane mm the slices were resampled to for the model ("native": none)


def predict_volume(loaded: LoadedModel, scan: ScanInput, prompts: str | Path, out: str | Path, *,
                   propagate: bool = False, dicom_seg: bool = False, intensity: str | dict | None = None,
                   modality: str | None = None, box_margin: float | None = None, min_pixels: int | None = None,
                   device: str = "auto", batch_size: int = 8, engine: str = "auto", overwrite: bool = False,
                   rundir: str | Path | None = None, spacing: Any = "run", keep: str = "all") -> VolumePrediction:
    """`train predict --input --prompts --out DIR`: segment `scan` from the prompt file (labels 1..N
    = its "classes"), each prompt's own slice or, with `propagate`, its whole structure
    (train.propagate); write <name>.nii.gz / .labels.json (/ .seg.dcm) into `out`. ``keep``
    (train.postprocess.KEEP_MODES): drop predicted regions no click points at (point prompts)."""
    from shared.prompts_file import read_prompt_file
    from train import propagate as prop
    from train.evaluate import encoder_engine

    t0 = time.perf_counter()
    out = check_outdir(out, scan.name, overwrite=overwrite)
    if dicom_seg and scan.kind != "dicom":
        raise ConfigError(f"--dicom-seg needs a DICOM series as --input (a SEG references the series' "
                          f"files); {scan.path} is a NIfTI file")
    if loaded.trained_prompt == "none":
        raise ConfigError(f"--run {rundir}: the run was trained without prompts (prompt none); segment with "
                          "--image SCAN.nii.gz (no prompts) instead of --prompts")
    margin = prop.DEFAULT_MARGIN if box_margin is None else float(box_margin)
    if margin < 0:
        raise ConfigError(f"--box-margin must be >= 0, got {box_margin}")
    min_px = prop.DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
    preset = choose_intensity(loaded, scan, intensity=intensity, modality=modality, rundir=rundir)
    known = loaded.class_names if loaded.class_names else None
    pf = read_prompt_file(prompts, scan.affine, scan.raw.shape[:3], known_classes=known)
    if dicom_seg:  # before the prediction: a name the SEG cannot hold would fail only at the end
        from shared.dicom_seg import check_segment_names

        check_segment_names(pf.classes, f"--prompts {pf.path}: --dicom-seg")
    seeds = seeds_from_prompts(pf, follows_boxes(loaded))
    check_keep(keep, seeds, propagate, f"--prompts {pf.path}")
    native = preprocess_raw(scan.raw, preset, name=str(scan.path))  # (S, R, C) = (k, j, i)
    mm = run_spacing(loaded.run_config, spacing)
    vol = resampled_scan(native, scan.affine, mm)
    if vol is not native:  # prompts onto the resampled grid (shared.spacing, pixel centres)
        seeds = [replace(s, prompt=_map_prompt(s.prompt, native.shape[1:], vol.shape[1:])) for s in seeds]

    dev = pick_device(device)
    loaded.model.to(dev).eval()
    inf = Inference(loaded.model, dev, batch_size, engine=encoder_engine(loaded.model, engine, dev))
    upcoming = [] if propagate else sorted({s.slice_index for s in seeds})
    cache = SliceEmbeddings(inf, vol, upcoming)
    with torch.inference_mode():
        result = prop.propagate(vol.shape, seeds, cache.logits, release=cache.release, propagate=propagate,
                                margin=margin, min_pixels=min_px)
    pred = keep_clicked(result.labels, seed_clicks(seeds), keep)
    if vol is not native:  # the mask on the scan's own grid, as its NIfTI / SEG must be
        from shared.spacing import resample_label

        pred = resample_label(pred, native.shape[1:])
    files = write_prediction(out, scan.name, pred, scan, pf.classes, dicom_seg=dicom_seg, overwrite=overwrite)
    voxels = {name: int(np.count_nonzero(pred == c)) for c, name in enumerate(pf.classes, start=1)}
    extents: dict[str, list[int]] = {}
    for chain in result.chains:
        name = pf.classes[chain.seed.class_index - 1]
        if chain.extent is None:
            continue
        lo, hi = chain.extent
        cur = extents.setdefault(name, [lo, hi])
        cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
    return VolumePrediction(files, pred, pf.classes, voxels, extents, cache.encoded, time.perf_counter() - t0, preset,
                            spacing_record(mm))


def check_keep(keep: str, seeds, propagate: bool, where: str) -> None:
    """--keep's clicked modes need clicks; clicked-slice would erase every propagated slice."""
    if keep == "all":
        return
    if any(s.prompt.box is not None for s in seeds):
        raise ConfigError(f"{where}: --keep {keep} keeps the regions that hold a click; the file has box "
                          "prompts (use --keep all)")
    if propagate and keep == "clicked-slice":
        raise ConfigError("--keep clicked-slice keeps only the clicked slices; with --propagate use "
                          "--keep clicked-volume")


def seed_clicks(seeds) -> dict[int, dict[int, np.ndarray]]:
    """{slice: {class: clicks (n, 2) xy}} of point seeds (train.postprocess's input)."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for s in seeds:
        per_class = out.setdefault(int(s.slice_index), {})
        pts = s.prompt.points_array()
        per_class[int(s.class_index)] = np.concatenate([per_class[s.class_index], pts]) \
            if s.class_index in per_class else pts
    return out


def _map_prompt(prompt, from_hw, to_hw):
    from shared.spacing import map_points
    from train.prompts import Prompt

    if prompt.box is not None:
        return Prompt.around(map_points(np.reshape(prompt.box, (2, 2)), from_hw, to_hw).ravel())
    return Prompt.at(*map_points(prompt.points_array(), from_hw, to_hw))
