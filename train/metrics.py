"""Volume metrics: Dice (DSC) and HD95, with the empty-case convention of this project.

Definitions agree with medpy's ``medpy.metric.binary.dc`` and ``hd95`` (tests compare them on real
masks): the surface of a mask is the mask minus its binary erosion (connectivity 1, voxels on the
array border count as surface), HD95 is the 95th percentile (numpy's linear interpolation) of the
pooled distances from each surface voxel of one mask to the nearest surface voxel of the other,
both directions, in mm using the voxel spacing.

Empty cases (one class of one volume, ``gt`` = ground truth, ``pred`` = prediction):

=================  =================  ===========  ======================================
gt                 pred               DSC          HD95
=================  =================  ===========  ======================================
non-empty          non-empty          2|A∩B|/...   95th percentile surface distance (mm)
non-empty          empty              0            volume diagonal in mm (penalty)
empty              non-empty          0            volume diagonal in mm (penalty)
empty              empty              NaN          NaN  -> not scored, left out of averages
=================  =================  ===========  ======================================

A prediction on an empty ground truth therefore never scores Dice 1 (SAMed's evaluation does
that), and a missed structure is not rewarded with HD95 0 (SAMed again). The diagonal,
``sqrt(sum((shape * spacing)^2))``, is the largest distance possible inside the volume.
This is the ``strict`` convention (the default). ``samed`` reproduces SAMed's
``utils.calculate_metric_percase`` (whose numbers the paper compares to), every case scored:

=================  =================  ===========  ======================================
gt                 pred               DSC          HD95
=================  =================  ===========  ======================================
non-empty          non-empty          2|A∩B|/...   95th percentile surface distance
non-empty          empty              0            0
empty              non-empty          1            0
empty              empty              0            0   (still counted in the averages)
=================  =================  ===========  ======================================

HD95 unit: ``mm`` (distances use the voxel spacing) or ``voxel`` (unit spacing, as SAMed calls
medpy's ``hd95`` without a spacing); the strict penalty diagonal is then in voxels too.

Over- and under-segmentation (issue 18): ``volume_ratio`` = predicted / ground-truth voxels (NaN
when the ground truth is empty; 0 for a missed structure), and ``mssd``, the mean signed surface
distance in mm, pooled over both surfaces like HD95. Sign convention: POSITIVE = the prediction
lies OUTSIDE the ground truth (spill), negative = inside it (shortfall). A prediction surface voxel
counts +d when it lies outside the ground truth and -d when inside; a ground-truth surface voxel
counts +d when it lies inside the prediction (the prediction reaches past it) and -d when outside.
So a prediction equal to the ground truth dilated by one voxel of 1 mm has mssd +1, eroded by one
voxel -1. NaN when either mask is empty (no surface to measure).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

Spacing = Sequence[float]

HD95_UNITS = ("mm", "voxel")
EMPTY_CASES = ("strict", "samed")
EMPTY_CASE_TEXT = {
    "strict": "gt and prediction empty: not scored (left out of averages); exactly one empty: "
              "DSC 0 and HD95 = volume diagonal",
    "samed": "SAMed calculate_metric_percase: prediction empty -> DSC 0, HD95 0; gt empty and "
             "prediction not -> DSC 1, HD95 0; every case counted in the averages",
}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two binary masks; NaN when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def diagonal_mm(shape: Sequence[int], spacing: Spacing) -> float:
    """Length of the volume's diagonal in mm: the HD95 penalty for a missed or spurious mask."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive bounding box (lo, hi) of the non-zero voxels of a non-empty mask."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from a's surface voxels to b's surface, and from b's to a's.

    Both masks must be non-empty. Works on the union bounding box plus one voxel (clipped at
    the array border), which gives exactly medpy's numbers: all surface voxels lie in the crop,
    and the erosion still sees the array border as background where the crop touches it.
    """
    d_ab, d_ba, _ = _surfaces(*_checked(a, b, spacing))
    return d_ab, d_ba


def _checked(a: np.ndarray, b: np.ndarray, spacing: Spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two bool masks of one shape and a float64 spacing with one entry per axis (ValueError otherwise)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (a.ndim,):
        raise ValueError(f"spacing {tuple(sp)} does not match a {a.ndim}-D mask")
    return a, b, sp


def _surfaces(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """:func:`surface_distances` plus what the signed distance needs: (the two crops, their
    surface masks), so HD95 and MSSD share one pair of distance transforms (the costly part)."""
    union = a | b
    lo, hi = _bbox(union)
    lo = np.maximum(lo - 1, 0)
    hi = np.minimum(hi + 1, a.shape)
    crop = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
    a, b = a[crop], b[crop]
    footprint = ndimage.generate_binary_structure(a.ndim, 1)
    a_surf = a ^ ndimage.binary_erosion(a, structure=footprint, iterations=1)
    b_surf = b ^ ndimage.binary_erosion(b, structure=footprint, iterations=1)
    dt_b = ndimage.distance_transform_edt(~b_surf, sampling=spacing)
    dt_a = ndimage.distance_transform_edt(~a_surf, sampling=spacing)
    return dt_b[a_surf], dt_a[b_surf], (a, b, a_surf, b_surf)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> float:
    """95th percentile of the symmetric surface distance in mm (medpy's ``hd95``).

    Follows the empty-case convention of this module: NaN when both masks are empty, the volume
    diagonal when exactly one is.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return float("nan")
    if has_p != has_g:
        return diagonal_mm(pred.shape, spacing)
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.hstack((d_pg, d_gp)), 95))


def volume_ratio(pred_voxels: int, gt_voxels: int) -> float:
    """Predicted / ground-truth volume (voxel counts); NaN when the ground truth is empty."""
    return float(pred_voxels) / float(gt_voxels) if gt_voxels > 0 else float("nan")


def mean_signed_surface_distance(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> float:
    """Mean signed surface distance (mm), + = prediction outside the ground truth (module doc).

    Pools both directions like :func:`hd95`: prediction-surface voxels signed by whether they lie
    outside ``gt``, ground-truth-surface voxels signed by whether they lie inside ``pred``.
    NaN when either mask is empty.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if not pred.any() or not gt.any():
        return float("nan")
    return surface_scores(pred, gt, spacing)[1]


def surface_scores(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> tuple[float, float]:
    """(HD95, MSSD) in mm of two non-empty masks from one pair of distance transforms: the very
    numbers of :func:`hd95` and :func:`mean_signed_surface_distance`, in half the time."""
    d_pg, d_gp, (p, g, p_surf, g_surf) = _surfaces(*_checked(pred, gt, spacing))
    h = float(np.percentile(np.hstack((d_pg, d_gp)), 95))
    sign_p = np.where(g[p_surf], -1.0, 1.0)  # prediction surface outside the gt: spill
    sign_g = np.where(p[g_surf], 1.0, -1.0)  # gt surface covered by the prediction: spill
    return h, float(np.concatenate((sign_p * d_pg, sign_g * d_gp)).mean())


@dataclass
class CaseScore:
    """One row of ``cases.csv``: one volume and one class."""

    volume: str
    class_index: int
    class_name: str
    dsc: float  # fraction 0-1; NaN when not scored
    hd95: float  # in the evaluation's unit (mm or voxels); NaN when not scored
    gt_voxels: int
    pred_voxels: int
    note: str = ""  # why a case is unscored or penalised
    volume_ratio: float = float("nan")  # pred_voxels / gt_voxels; NaN when the gt is empty
    mssd: float = float("nan")  # mean signed surface distance, mm, + = prediction outside the gt

    @property
    def scored(self) -> bool:
        return not math.isnan(self.dsc)


def score_case(p: np.ndarray, g: np.ndarray, spacing: Spacing, *, hd95_unit: str = "mm",
               empty_case: str = "strict") -> tuple[float, float, str]:
    """(DSC, HD95, note) of one binary prediction `p` against ground truth `g`.

    `hd95_unit` "mm" uses `spacing`, "voxel" unit spacing; `empty_case` "strict" or "samed"
    (module doc). NaN = not scored.
    """
    if hd95_unit not in HD95_UNITS:
        raise ValueError(f"hd95_unit must be one of {HD95_UNITS}, got {hd95_unit!r}")
    if empty_case not in EMPTY_CASES:
        raise ValueError(f"empty_case must be one of {EMPTY_CASES}, got {empty_case!r}")
    sp = spacing if hd95_unit == "mm" else (1.0,) * p.ndim
    has_p, has_g = bool(p.any()), bool(g.any())
    if has_p and has_g:
        return dice(p, g), hd95(p, g, sp), ""
    if empty_case == "samed":
        if has_p:
            return 1.0, 0.0, "SAMed rule: class absent from ground truth, predicted (DSC 1, HD95 0)"
        if has_g:
            return 0.0, 0.0, "SAMed rule: missed, empty prediction (DSC 0, HD95 0)"
        return 0.0, 0.0, "SAMed rule: class absent from ground truth and prediction (DSC 0, HD95 0)"
    if not has_p and not has_g:
        return float("nan"), float("nan"), "not scored: class absent from ground truth and prediction"
    if has_p:
        return 0.0, diagonal_mm(p.shape, sp), \
            "false positive: class absent from ground truth (DSC 0, HD95 = diagonal)"
    return 0.0, diagonal_mm(p.shape, sp), "missed: empty prediction (DSC 0, HD95 = diagonal)"


def score_volume(
    volume_id: str,
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Spacing,
    class_names: Sequence[str],
    *,
    hd95_unit: str = "mm",
    empty_case: str = "strict",
) -> list[CaseScore]:
    """DSC and HD95 of every foreground class of one volume (label maps of equal shape)."""
    if pred.shape != gt.shape:
        raise ValueError(f"{volume_id}: prediction shape {pred.shape} != ground truth {gt.shape}")
    rows = []
    for k in range(1, len(class_names)):
        p = pred == k
        g = gt == k
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        if n_p and n_g and hd95_unit == "mm":  # the usual case: HD95 and MSSD share the distances
            h, mssd = surface_scores(p, g, spacing)
            d, note = dice(p, g), ""
        else:
            d, h, note = score_case(p, g, spacing, hd95_unit=hd95_unit, empty_case=empty_case)
            mssd = mean_signed_surface_distance(p, g, spacing)
        rows.append(CaseScore(volume_id, k, class_names[k], d, h, n_g, n_p, note, volume_ratio(n_p, n_g), mssd))
    return rows


@dataclass
class Summary:
    """Averages as the published tables compute them.

    Per class: the mean over the volumes where that class is scored. Overall: the mean of the
    per-class means (classes never scored are left out). Volume ratio: per class the median and
    mean over the volumes whose ground truth holds the class, overall the median over all those
    (volume, class) cases; mssd: mean over the volumes where both masks are non-empty, overall
    the mean of the per-class means.
    """

    mean_dsc: float
    mean_hd95: float
    per_class: dict  # name -> {"dsc", "hd95", "n_volumes", "volume_ratio_median", "volume_ratio_mean", "mssd"}
    n_volumes: int
    median_volume_ratio: float = float("nan")
    mean_mssd: float = float("nan")


def _nanstat(fn, values: Sequence[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(fn(v)) if v else float("nan")


def summarise(rows: Sequence[CaseScore], class_names: Sequence[str]) -> Summary:
    per_class: dict[str, dict] = {}
    for k in range(1, len(class_names)):
        mine = [r for r in rows if r.class_index == k]
        scored = [r for r in mine if r.scored]
        ratios = [r.volume_ratio for r in mine]
        shape = {"volume_ratio_median": _nanstat(np.median, ratios),
                 "volume_ratio_mean": _nanstat(np.mean, ratios),
                 "mssd": _nanstat(np.mean, [r.mssd for r in mine])}
        if scored:
            per_class[class_names[k]] = {
                "dsc": float(np.mean([r.dsc for r in scored])),
                "hd95": float(np.mean([r.hd95 for r in scored])),
                "n_volumes": len(scored), **shape,
            }
        else:
            per_class[class_names[k]] = {"dsc": float("nan"), "hd95": float("nan"), "n_volumes": 0, **shape}
    valid = [v for v in per_class.values() if v["n_volumes"] > 0]
    mean_dsc = float(np.mean([v["dsc"] for v in valid])) if valid else float("nan")
    mean_hd95 = float(np.mean([v["hd95"] for v in valid])) if valid else float("nan")
    return Summary(mean_dsc, mean_hd95, per_class, len({r.volume for r in rows}),
                   median_volume_ratio=_nanstat(np.median, [r.volume_ratio for r in rows]),
                   mean_mssd=_nanstat(np.mean, [v["mssd"] for v in valid]))


def slice_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-slice foreground Dice of (S, H, W) label maps, all classes pooled, vectorised.

    Used to pick the worst slices for overlays; NaN where a slice is empty in both.
    """
    fg_match = (pred == gt) & (gt > 0)
    inter = fg_match.reshape(len(gt), -1).sum(1).astype(np.float64)
    total = (pred > 0).reshape(len(gt), -1).sum(1) + (gt > 0).reshape(len(gt), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), np.nan)
