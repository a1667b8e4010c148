"""Exemplar selection: which labelled slices the synthesis may copy from.

Rules (``spec`` is ``"N"`` or ``"P%"``; P% means P percent of the eligible slices, rounded half
up, at least 1):

- Single-target tasks (``source.task == "single"``, e.g. whole tumour): a seeded random choice,
  without replacement, among the slices with at least ``min_pixels`` foreground pixels (the
  paper: 75 / 150 / 450 of BraTS 2018's 14,662 such slices at 0.5 / 1 / 3 %).
- Multi-organ tasks (``"multi"``), the paper's "most organs" rule. Each volume's eligible slices
  (at least one organ with ``min_pixels`` pixels) are ranked by the number of organs present
  (an organ counts when it has ``min_pixels`` pixels), ties by foreground area, then by slice
  index. N = 1 gives the best slice over all volumes. Otherwise selection goes in rounds: round r
  takes the r-th best slice of every volume; when fewer picks remain than volumes in a round,
  those volumes are chosen by seed. So N < V picks N volumes by seed and the best slice of each,
  N = k x V the k best slices of every volume, and any other N = k x V + r the k best of every
  volume plus the (k+1)-th best of r volumes chosen by seed. A volume that runs out of eligible
  slices drops out of later rounds.

Asking for more exemplars than eligible slices is a DataError with the numbers.

The background pool: slices of the chosen cases with no foreground at all and real content,
i.e. at least ``BACKGROUND_MIN_CONTENT`` (5 %) of the slice's pixels brighter than the slice's
minimum by more than ``CONTENT_DELTA`` (0.02 of the [0, 1] range): brain tissue or a body cross
section, not an empty slab.

This module holds the rules and the per-slice statistics they score; the exemplar list they
produce (choosing, reading, writing, validating it) is :mod:`synth.selection.exemplar_list`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from shared.arrays import slice_class_counts
from shared.errors import ConfigError, DataError
from shared.intensity import ExactSliceMinMax, float_minmax_counts_above
from shared.volume import Volume

BACKGROUND_MIN_CONTENT = 0.05
CONTENT_DELTA = 0.02
FALLBACK_POOL_FRACTION = 0.25  # share of a volume's slices used when none is free of foreground


# ---------------------------------------------------------------- spec
@dataclass(frozen=True)
class ExemplarSpec:
    """``--exemplars`` parsed: a count (``"150"``) or a percentage of eligible slices (``"1%"``)."""

    text: str
    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | int) -> "ExemplarSpec":
        raw = str(text).strip()
        if re.fullmatch(r"\d+", raw):
            n = int(raw)
            if n < 1:
                raise ConfigError(f"--exemplars {raw}: need at least 1 exemplar")
            return cls(raw, count=n)
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", raw)
        if match:
            p = float(match.group(1))
            if not 0 < p <= 100:
                raise ConfigError(f"--exemplars {raw}: a percentage must be in (0, 100]")
            return cls(raw, percent=p)
        raise ConfigError(f"--exemplars {raw!r}: expected a count (e.g. 150) or a percentage of the "
                          "eligible slices (e.g. 1% or 0.5%)")

    def resolve(self, eligible: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, int(math.floor(self.percent / 100.0 * eligible + 0.5)))


# ---------------------------------------------------------------- per-volume statistics
@dataclass
class VolumeScan:
    """Per-slice statistics of one volume: pixel counts per class and content fraction."""

    volume_id: str
    counts: np.ndarray  # (S, num_classes) int64
    content: np.ndarray  # (S,) float, fraction of pixels above the slice background level

    @property
    def num_slices(self) -> int:
        return int(self.counts.shape[0])

    @property
    def foreground(self) -> np.ndarray:
        return self.counts[:, 1:].sum(axis=1)

    def organs(self, min_pixels: int) -> np.ndarray:
        return (self.counts[:, 1:] >= min_pixels).sum(axis=1)

    def background_slices(self) -> np.ndarray:
        return np.flatnonzero((self.foreground == 0) & (self.content >= BACKGROUND_MIN_CONTENT))


def scan_volume(volume: Volume) -> VolumeScan:
    """Class pixel counts and content fraction for every slice, vectorised over the volume."""
    counts = slice_class_counts(volume.label, len(volume.class_names))
    return VolumeScan(volume.volume_id, counts, content_fraction(volume.image))


def content_fraction(image: np.ndarray) -> np.ndarray:
    """(S,) fraction of each slice's pixels brighter than its minimum by more than CONTENT_DELTA
    (per slice, so a few slices at a time give the same numbers as the whole volume)."""
    img = image.reshape(image.shape[0], -1)
    level = img.min(axis=1, keepdims=True) + CONTENT_DELTA
    return (img > level).mean(axis=1)


def content_fraction_exact(minmax: "ExactSliceMinMax") -> np.ndarray:
    """:func:`content_fraction` of ``apply_intensity(raw)`` under the per-slice min-max preset, from
    the integers (``shared.intensity.ExactSliceMinMax``): the same float64 numbers, without the
    float32 volume. A slice's minimum maps to 0, so the level is ``float32(0) + CONTENT_DELTA`` as
    :func:`content_fraction` computes it, and "above the level" is "offset >= the first offset above"."""
    level = np.float32(0.0) + np.float32(CONTENT_DELTA)
    counts = minmax.count_at_least(minmax.first_above(level))
    return counts / float(np.prod(minmax.raw.shape[1:]))  # the mean of 0/1 values: count / n, as float64


def content_fraction_float(raw: np.ndarray) -> np.ndarray | None:
    """:func:`content_fraction` of ``apply_intensity(raw)`` under the per-slice min-max preset for a
    float32 scan (z-scored FLAIR), from one comparison per voxel of ``raw``
    (``shared.intensity.float_minmax_counts_above``); None for other dtypes. A slice's minimum
    maps to 0, so the level is ``float32(0) + CONTENT_DELTA`` as :func:`content_fraction` computes it."""
    level = np.float32(0.0) + np.float32(CONTENT_DELTA)
    counts = float_minmax_counts_above(raw, level)
    return None if counts is None else counts / float(np.prod(raw.shape[1:]))


def scan_source(source, case_ids: Iterable[str], *, progress: bool = False) -> list[VolumeScan]:
    case_ids = list(case_ids)
    iterator: Iterable[str] = case_ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(case_ids, desc=f"scanning {source.name}", unit="vol", leave=False)
    return [scan_volume(source.load(c)) for c in iterator]


# ---------------------------------------------------------------- rules
def pick_random(scans: list[VolumeScan], n: int, seed: int, min_pixels: int) -> list[tuple[str, int]]:
    eligible = [(s.volume_id, int(k)) for s in scans for k in np.flatnonzero(s.foreground >= min_pixels)]
    _check_enough(n, len(eligible), min_pixels, scans)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(eligible), size=n, replace=False)
    return sorted(eligible[i] for i in chosen)


def rank_slices(scan: VolumeScan, min_pixels: int) -> list[int]:
    """Eligible slices of a volume, best first: most organs, then largest foreground, then index."""
    organs, area = scan.organs(min_pixels), scan.foreground
    eligible = np.flatnonzero(organs > 0)
    order = np.lexsort((eligible, -area[eligible], -organs[eligible]))
    return [int(k) for k in eligible[order]]


def pick_most_organs(scans: list[VolumeScan], n: int, seed: int, min_pixels: int) -> list[tuple[str, int]]:
    ranked = {s.volume_id: rank_slices(s, min_pixels) for s in scans}
    total = sum(len(r) for r in ranked.values())
    _check_enough(n, total, min_pixels, scans)
    if n == 1:
        by_id = {s.volume_id: s for s in scans}
        best = min(((v, r[0]) for v, r in ranked.items() if r),
                   key=lambda vk: (-by_id[vk[0]].organs(min_pixels)[vk[1]], -by_id[vk[0]].foreground[vk[1]],
                                   vk[0], vk[1]))
        return [best]
    rng = np.random.default_rng(seed)
    picks: list[tuple[str, int]] = []
    volumes = sorted(ranked)
    rnd = 0
    while len(picks) < n:
        available = [v for v in volumes if len(ranked[v]) > rnd]
        remaining = n - len(picks)
        if remaining < len(available):
            available = sorted(available[i] for i in rng.choice(len(available), size=remaining, replace=False))
        picks.extend((v, ranked[v][rnd]) for v in available)
        rnd += 1
    return sorted(picks)


def _check_enough(n: int, eligible: int, min_pixels: int, scans: list[VolumeScan]) -> None:
    if n > eligible:
        raise DataError(f"asked for {n} exemplars but only {eligible} slices of the {len(scans)} chosen "
                        f"case(s) hold >= {min_pixels} foreground pixels")


# ---------------------------------------------------------------- the background pool
def background_pool(scans: list[VolumeScan], exemplar_pairs: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """Slices free of foreground with real content; if the chosen cases have none, the fallback.

    Fallback (e.g. a CT cropped to the abdomen, with an organ in every slice): per volume, the
    ``FALLBACK_POOL_FRACTION`` of its content slices with the least foreground, exemplar slices
    excluded. Their labelled pixels are erased by inpainting when the bank is built
    (``synth.synthesis.background.background_image``); each such entry records ``erased_pixels``.
    """
    strict = [{"volume": s.volume_id, "slice": int(k)} for s in scans for k in s.background_slices()]
    if strict:
        return strict
    pool = []
    for scan in scans:
        candidates = [int(k) for k in np.flatnonzero(scan.content >= BACKGROUND_MIN_CONTENT)
                      if (scan.volume_id, int(k)) not in exemplar_pairs]
        candidates.sort(key=lambda k: (int(scan.foreground[k]), k))
        keep = max(1, int(round(FALLBACK_POOL_FRACTION * len(candidates)))) if candidates else 0
        pool += [{"volume": scan.volume_id, "slice": k, "erased_pixels": int(scan.foreground[k])}
                 for k in sorted(candidates[:keep])]
    return pool


def slice_classes(scan: VolumeScan, k: int, class_names: tuple[str, ...]) -> dict[str, int]:
    """Class name -> pixel count of the classes present in slice ``k`` (background left out)."""
    return {class_names[c]: int(scan.counts[k, c]) for c in range(1, len(class_names)) if scan.counts[k, c] > 0}
