"""The background choice of the anatomy rule: backgrounds chosen for the object.

:class:`AnatomyIndex` caches, per bank, what the background choice needs: each pool slice's
content (body/brain) area and extent, each exemplar's content area and object extent, and the
ring of pixels 2-4 px outside each object (for the placement test of
:mod:`synth.synthesis.placement`). :func:`choose_background` draws one background for an
exemplar. Pure functions of their inputs (randomness comes from the caller's generator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from synth.synthesis.pixel_checks import RING_OUTER_PX, ring_mask

if TYPE_CHECKING:  # pragma: no cover
    from synth.synthesis.bank import SliceBank, SliceRef
    from synth.synthesis.config import Placement

_MAX_RING_POINTS = 256


def ring_points(crop: np.ndarray, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """(N, 2) float64 (x, y) source-frame points of the ring around a label crop (nonzero =
    object) whose top-left pixel is ``bbox``'s; a deterministic subsample of <= 256."""
    pad = int(math.ceil(RING_OUTER_PX)) + 1
    padded = np.pad(crop > 0, pad)
    ys, xs = np.nonzero(ring_mask(padded))
    step = max(1, -(-ys.size // _MAX_RING_POINTS))
    y0, _, x0, _ = bbox
    return np.stack([xs[::step] + (x0 - pad), ys[::step] + (y0 - pad)], axis=1).astype(np.float64)


# =============================================================================================
# Per-bank caches for the background choice



@dataclass(frozen=True)
class ContentStats:
    area: int  # content pixels
    height: int  # content bounding box, pixels (0 when empty)
    width: int


class AnatomyIndex:
    """Derived geometry of a bank's slices (cached; no randomness, no state beyond the caches)."""

    def __init__(self, bank: "SliceBank"):
        self.bank = bank
        self._bg: dict[tuple[Any, float], ContentStats] = {}
        self._ex: dict[tuple[Any, float], int] = {}
        self._ring: dict[tuple[Any, int | None], np.ndarray] = {}
        self._eligible: dict[tuple, tuple[list, str]] = {}
        self._tables: dict[float, PoolTable] = {}

    def background_stats(self, ref: "SliceRef", threshold: float) -> ContentStats:
        key = (ref, threshold)
        s = self._bg.get(key)
        if s is None:
            area = self.bank.content_area(ref, threshold)
            box = self.bank.content_bbox(ref, threshold)
            s = ContentStats(area, 0 if box is None else box[1] - box[0] + 1,
                             0 if box is None else box[3] - box[2] + 1)
            self._bg[key] = s
        return s

    def exemplar_area(self, ref: "SliceRef", threshold: float) -> int:
        key = (ref, threshold)
        a = self._ex.get(key)
        if a is None:
            a = self._ex[key] = int(np.count_nonzero(self.bank.exemplar(ref)[0] > threshold))
        return a

    def ring(self, ref: "SliceRef", cls: int | None) -> np.ndarray:
        """(N, 2) points: the object's sample points, then its ring's (``ObjectInfo.points``
        first, so ``len(info.points)`` splits them)."""
        key = (ref, cls)
        pts = self._ring.get(key)
        if pts is None:
            info = self.bank.object_info(ref, cls)
            pts = self._ring[key] = np.ascontiguousarray(
                np.concatenate([info.points, ring_points(info.crop, info.bbox)]).T)
        return pts

    def pool_table(self, threshold: float) -> "PoolTable":
        """Every pool slice's content stats and frame size as arrays, in pool order (each slice
        decoded once per threshold, not once per exemplar)."""
        table = self._tables.get(threshold)
        if table is None:
            refs = list(self.bank.background_refs)
            stats = [self.background_stats(ref, threshold) for ref in refs]
            shapes = np.array([self.bank.background_shape(ref) for ref in refs], dtype=np.int64).reshape(-1, 2)
            table = self._tables[threshold] = PoolTable(
                refs, np.array([s.area for s in stats], dtype=np.int64),
                np.array([s.height for s in stats], dtype=np.int64), np.array([s.width for s in stats], dtype=np.int64),
                shapes[:, 0], shapes[:, 1])
        return table

    def eligible_backgrounds(self, base: "SliceRef", pl: "Placement", scale_low: float) -> tuple[list, str]:
        """Pool slices that can hold ``base``'s object(s) and sit at a compatible level, in pool
        order, and the tier used: ``"level"`` (content area within ``level_ratio`` of the
        exemplar's own and room for the object), ``"room"`` (room only: no slice at a compatible
        level), ``"pool"`` (nothing has room: the whole pool; placement fallbacks decide)."""
        key = (base, pl.content_threshold, pl.min_inside, pl.level_ratio, scale_low)
        hit = self._eligible.get(key)
        if hit is not None:
            return hit
        thr = pl.content_threshold
        ex_img = self.bank.exemplar(base)[0]
        info = self.bank.object_info(base, None)
        y0, y1, x0, x1 = info.bbox
        ex_area = self.exemplar_area(base, thr)
        t = self.pool_table(thr)
        # float64 arrays, the same operations in the same order as per-slice Python floats: the
        # same comparisons, so the same eligible lists (and samples) as a loop over the pool
        fy, fx = t.frame_h / ex_img.shape[0], t.frame_w / ex_img.shape[1]
        k = scale_low  # the smallest object scale the placement may use
        need_h, need_w = (y1 - y0 + 1) * fy * k, (x1 - x0 + 1) * fx * k
        need_area = info.count * fy * fx * k * k * pl.min_inside
        has_room = (t.area >= need_area) & (t.height >= need_h) & (t.width >= need_w)
        mapped = ex_area * fy * fx
        at_level = has_room & (mapped > 0) & (pl.level_ratio * mapped <= t.area) & (t.area <= mapped / pl.level_ratio)
        room = [t.refs[i] for i in np.flatnonzero(has_room)]
        level = [t.refs[i] for i in np.flatnonzero(at_level)]
        hit = (level, "level") if level else (room, "room") if room else (list(self.bank.background_refs), "pool")
        self._eligible[key] = hit
        return hit


@dataclass(frozen=True)
class PoolTable:
    """:meth:`AnatomyIndex.pool_table`: per pool slice (pool order) content area, content box
    height and width, and frame height and width."""

    refs: list
    area: np.ndarray
    height: np.ndarray
    width: np.ndarray
    frame_h: np.ndarray
    frame_w: np.ndarray


def anatomy_index(bank: "SliceBank") -> AnatomyIndex:
    """The bank's index (created on first use, stored on the bank: caches of derived data only)."""
    idx = getattr(bank, "_anatomy_index", None)
    if idx is None:
        idx = AnatomyIndex(bank)
        bank._anatomy_index = idx  # type: ignore[attr-defined]
    return idx


def choose_background(rng: np.random.Generator, bank: "SliceBank", base: "SliceRef",
                      pl: "Placement", scale_low: float) -> tuple["SliceRef", float, dict]:
    """One background for ``base``. ``random``: uniform over the pool (the paper). ``fit``: of
    ``background_candidates`` uniform draws from the eligible slices (see
    :meth:`AnatomyIndex.eligible_backgrounds`), the one whose content covers most of the
    exemplar's object at its own position. Returns (ref, coverage, record)."""
    if pl.background_choice == "random":
        ref = bank.background_refs[int(rng.integers(len(bank.background_refs)))]
        return ref, bank.coverage(base, ref, pl.content_threshold), {"choice": "random"}
    refs, tier = anatomy_index(bank).eligible_backgrounds(base, pl, scale_low)
    cand = rng.integers(len(refs), size=pl.background_candidates)
    best, score = None, -1.0
    for i in cand:
        ref = refs[int(i)]
        c = bank.coverage(base, ref, pl.content_threshold)
        if c > score:
            best, score = ref, c
    return best, score, {"choice": "fit", "tier": tier, "eligible": len(refs)}


# =============================================================================================
