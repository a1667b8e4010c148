"""The placement search of the anatomy rule: placements that never leave an object hanging off
the body. (The background choice is :mod:`synth.synthesis.background_choice`, the ring and the
floating measure :mod:`synth.synthesis.pixel_checks`.)

- :func:`search_placement`: for one drawn object transform, the first acceptable placement in
  the issue's order: the drawn position; moved towards the background's content; other drawn
  positions; the same again at smaller scales within the configured range. ``None`` if none is
  acceptable (the caller then tries another background, then a new exemplar/background pair).
- :func:`drawn_tests`: the acceptance of the drawn placements of a sample's objects at once.

Acceptance ("the anatomy rule"): at least ``min_inside`` of the object's pixels land on the
background's content (``T'(Ib) > content_threshold``) and at least ``min_ring_content`` of its
ring lands on tissue (``T'(Ib) >= air_threshold``). Both are tested on fixed subsamples (<= 256
points each) of the object and its ring, mapped by the object's affine. Pure functions of their
inputs (randomness comes from the caller's generator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from synth.synthesis.transforms import Affine, TransformParams, forward_affine

if TYPE_CHECKING:  # pragma: no cover
    from synth.synthesis.bank import ObjectInfo
    from synth.synthesis.config import Placement

_MOVE_STEPS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)  # fractions of the way to the content centre


# =============================================================================================

def shift_bounds(extent: tuple[float, float, float, float], shape: tuple[int, int],
                  max_shift: float) -> tuple[float, float, float, float]:
    """Translations keeping an extent (x0, y0, x1, y1) inside the frame, within +-max_shift."""
    x0, y0, x1, y1 = extent
    h, w = shape
    mx, my = max_shift * w, max_shift * h
    return max(-mx, -0.5 - x0), min(mx, w - 0.5 - x1), max(-my, -0.5 - y0), min(my, h - 0.5 - y1)


def clamp_shift(t: float, lo: float, hi: float) -> float:
    """A translation clamped to [lo, hi] (from :func:`shift_bounds`), unchanged when the range is empty."""
    return t if lo > hi else min(max(t, lo), hi)


def _clip(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if lo > hi:
        return v
    np.maximum(v, lo, out=v)
    return np.minimum(v, hi, out=v)


def padded_frame(image: np.ndarray) -> np.ndarray:
    """``image`` with a 1-pixel border of -1 (below every threshold), raveled: points that leave
    the frame are clipped onto the border and so count as off the body (see :func:`_shares`)."""
    return cv2.copyMakeBorder(image, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=-1.0).ravel()


def _shares(pts: np.ndarray, txs: np.ndarray, tys: np.ndarray, padded: np.ndarray, w: int, h: int,
            threshold: float, inclusive: bool) -> np.ndarray:
    """For each translation k, the share of the points ``pts`` (2, N) (x row, y row) moved by
    (txs[k], tys[k]) and rounded that land on pixels ``> threshold`` (``>=`` when ``inclusive``);
    count / max(1, N). ``padded``: :func:`padded_frame` of the h x w background; points outside the
    frame land on its -1 border and count as off. The placement test is two of these: an object's
    points on content (``> content_threshold``) and its ring's on tissue (``>= air_threshold``)."""
    q = pts[:, None, :] + np.array((txs, tys))[:, :, None]  # (2, K, N)
    vals = padded.take(_padded_index(q[0], q[1], w, h))
    hit = vals >= threshold if inclusive else vals > threshold
    return np.count_nonzero(hit, axis=1) / max(1, pts.shape[1])


def first_acceptable(pts: np.ndarray, txs: np.ndarray, tys: np.ndarray, padded: np.ndarray, w: int, h: int,
                     n_obj: int, pl: "Placement") -> tuple[int, float, float] | None:
    """The anatomy rule on K candidate translations of one object: the first k at which at least
    ``pl.min_inside`` of the object's points (the first ``n_obj`` columns of ``pts`` (2, N), x row,
    y row, moved by (txs[k], tys[k]) and rounded) land on content (``> pl.content_threshold``) and
    at least ``pl.min_ring_content`` of the rest (its ring) on tissue (``>= pl.air_threshold``),
    as (k, inside share, ring share), or None. ``padded``: :func:`padded_frame` of the h x w
    background (points off the frame count as off the body); no ring points: ring share 1.0.

    The ring is looked up only for the translations whose object passes: in the fallbacks most
    do not (about 85 % of BraTS candidates), so this skips most ring work."""
    inside = _shares(pts[:, :n_obj], txs, tys, padded, w, h, pl.content_threshold, False)
    cand = np.flatnonzero(inside >= pl.min_inside)
    if not cand.size:
        return None
    if pts.shape[1] == n_obj:
        ring = np.ones(cand.size)
    else:
        ring = _shares(pts[:, n_obj:], txs[cand], tys[cand], padded, w, h, pl.air_threshold, True)
    good = np.flatnonzero(ring >= pl.min_ring_content)
    if not good.size:
        return None
    k = int(cand[good[0]])
    return k, float(inside[k]), float(ring[good[0]])


def _padded_index(x: np.ndarray, y: np.ndarray, w: int, h: int) -> np.ndarray:
    """Flat indices into :func:`padded_frame` of the points (x, y), rounded to pixels and clipped
    onto the -1 border; ``x`` and ``y`` (float64, any shape) are overwritten. Every step after the
    rounding is exact integer arithmetic in float64: the index is (y + 1) * (w + 2) + x + 1."""
    np.rint(x, out=x)
    np.rint(y, out=y)
    np.maximum(x, -1.0, out=x)  # ufuncs, not np.clip (its Python wrapper costs more than the work)
    np.maximum(y, -1.0, out=y)
    np.minimum(x, float(w), out=x)
    np.minimum(y, float(h), out=y)
    y *= float(w + 2)
    y += x
    idx = y.astype(np.intp)
    idx += w + 3
    return idx


@dataclass(frozen=True)
class PlacementResult:
    params: TransformParams
    inside: float  # share of the object on content
    ring: float  # share of its ring on tissue
    step: str  # drawn | moved | redrawn | shrunk
    tries: int  # candidate placements tested


def content_centre(image: np.ndarray, threshold: float) -> tuple[float, float] | None:
    """Centroid (x, y) of the rendered background's content (pixels > threshold)."""
    # Row and column counts (cv2.reduce, ~5x cv2.moments here): the moments are sums of integers,
    # exact in int64 as in OpenCV's binary moments, so the centroid is the same float.
    m = (image > threshold).view(np.uint8)
    cols = cv2.reduce(m, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    n = int(cols.sum())
    if n <= 0:
        return None
    rows = cv2.reduce(m, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    return float(cols @ np.arange(cols.size)) / n, float(rows @ np.arange(rows.size)) / n


def search_placement(info: "ObjectInfo", points: np.ndarray, params: TransformParams, extra: np.ndarray,
                     src_shape: tuple[int, int], image: np.ndarray, pl: "Placement",
                     scale_low: float, max_shift: float, ctx: dict,
                     drawn: "DrawnTest | None" = None) -> PlacementResult | None:
    """The first acceptable placement of one object on the rendered background ``image``.

    Order (each group tested in one vectorised lookup, first acceptable wins): the drawn
    translation (clamped so the object's box stays in the frame and within +-max_shift); moved
    5 % .. 100 % of the way towards the content's centre (clamped to the frame only); the
    ``extra`` drawn translations and no shift; then the same at ``shrink_steps`` smaller scales,
    geometrically down to ``scale_low`` (the configured range's lower bound). ``ctx``: a dict
    per rendered background caching its padded frame and content centre (shared by its objects).
    ``drawn``: this object's :func:`drawn_tests` result, the first group already tested."""
    if drawn is not None and drawn.ok:
        return PlacementResult(params.with_translation(drawn.tx, drawn.ty), drawn.inside, drawn.ring, "drawn", 1)
    h, w = image.shape
    padded = _padded(image, ctx)
    thr = pl.content_threshold
    n_obj = len(info.points)
    ring = points
    scales = [params.scale]
    if pl.shrink_steps > 0 and scale_low < params.scale:
        ratio = (scale_low / params.scale) ** (1.0 / pl.shrink_steps)
        scales += [params.scale * ratio ** k for k in range(1, pl.shrink_steps + 1)]
    tries = 0
    for si, s in enumerate(scales):
        p = params if si == 0 else params.replace(scale=float(s))
        g = drawn.geometry if si == 0 and drawn is not None and drawn.geometry is not None else None
        if g is None:
            g = _drawn_geometry(info, ring, p, src_shape, (h, w))
        fwd, box = g.fwd, g.box
        lx, hx, ly, hy = shift_bounds(box, (h, w), max_shift)
        fx0, fx1, fy0, fy1 = shift_bounds(box, (h, w), 1.0)
        pts = np.stack((g.px, g.py))
        tx0, ty0 = clamp_shift(p.tx, lx, hx), clamp_shift(p.ty, ly, hy)
        for name in ("drawn", "moved", "redrawn"):
            if name == "drawn" and si == 0 and drawn is not None:
                tries += 1  # tested by drawn_tests, not acceptable
                continue
            if name == "drawn":
                txs, tys = np.array([tx0]), np.array([ty0])
            elif name == "moved":  # (the content centre only when a move is needed: most samples skip it)
                centre = ctx.get("centre")
                if centre is None:
                    centre = ctx["centre"] = content_centre(image, thr) or ((w - 1) / 2.0, (h - 1) / 2.0)
                cx, cy = fwd.apply_xy(np.array([info.center[0]]), np.array([info.center[1]]))
                a = np.asarray(_MOVE_STEPS)
                txs = _clip(tx0 + a * (centre[0] - (cx[0] + tx0)), fx0, fx1)
                tys = _clip(ty0 + a * (centre[1] - (cy[0] + ty0)), fy0, fy1)
            else:
                txs = _clip(np.concatenate((extra[:, 0] * (max_shift * w), [0.0])), lx, hx)
                tys = _clip(np.concatenate((extra[:, 1] * (max_shift * h), [0.0])), ly, hy)
            tries += txs.size
            first = first_acceptable(pts, txs, tys, padded, w, h, n_obj, pl)
            if first is not None:
                j, inside, on = first
                step = name if si == 0 else "shrunk"
                return PlacementResult(p.with_translation(float(txs[j]), float(tys[j])), inside, on, step, tries)
    return None


@dataclass(frozen=True)
class DrawnTest:
    """The drawn position of one object, tested: its translation and shares (see _shares),
    and the geometry at the drawn scale that :func:`search_placement` reuses when the drawn
    position is not acceptable (the same floats it would compute again)."""

    tx: float
    ty: float
    inside: float
    ring: float
    ok: bool
    geometry: "_DrawnGeometry | None" = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _DrawnGeometry:
    """One object's transform at its drawn scale, without translation: the affine, the extent
    of its box and its points (object, then ring) mapped by it."""

    fwd: Affine
    box: tuple[float, float, float, float]
    px: np.ndarray
    py: np.ndarray


def _drawn_geometry(info: "ObjectInfo", points: np.ndarray, params: TransformParams, src_shape: tuple[int, int],
                    shape: tuple[int, int]) -> _DrawnGeometry:
    fwd = forward_affine(params, info.center, src_shape, shape, with_translation=False)
    px, py = fwd.apply_xy(points[0], points[1])
    return _DrawnGeometry(fwd, fwd.bbox(info.bbox), px, py)


def _clamped_translation(params: TransformParams, box: tuple[float, float, float, float], shape: tuple[int, int],
                         max_shift: float) -> tuple[float, float]:
    """The drawn translation, clamped so the box stays in the frame and within +-max_shift."""
    lx, hx, ly, hy = shift_bounds(box, shape, max_shift)
    return clamp_shift(params.tx, lx, hx), clamp_shift(params.ty, ly, hy)


def _padded(image: np.ndarray, ctx: dict) -> np.ndarray:
    padded = ctx.get("padded")
    if padded is None:
        padded = ctx["padded"] = padded_frame(image)
    return padded


def drawn_tests(objects: list[tuple["ObjectInfo", np.ndarray, TransformParams, tuple[int, int]]],
                image: np.ndarray, pl: "Placement", max_shift: float, ctx: dict) -> list[DrawnTest]:
    """The first test of :func:`search_placement` (the drawn translation at the drawn scale) for
    every object of a sample, ``(info, points, params, src_shape)`` each, in one lookup.

    The objects' draws are all made before any is placed, and each test reads only the
    background, so testing them together gives each object exactly the numbers of its own
    :func:`_shares` calls (the same float64 additions, rounding and index per point; counts
    as integers): a multi-organ sample makes one lookup instead of one per organ."""
    h, w = image.shape
    padded = _padded(image, ctx)
    geos = [_drawn_geometry(info, points, params, src_shape, (h, w)) for info, points, params, src_shape in objects]
    moves = [_clamped_translation(params, g.box, (h, w), max_shift) for (_, _, params, _), g in zip(objects, geos)]
    sizes = [(len(info.points), g.px.size) for (info, _, _, _), g in zip(objects, geos)]
    if len(objects) == 1:  # the single task: no concatenation or running sums (call overhead is most of the cost)
        counts = [_drawn_counts_one(geos[0], moves[0], sizes[0][0], padded, w, h, pl)]
    else:
        counts = _drawn_counts(geos, moves, sizes, padded, w, h, pl)
    out = []
    for (n_obj, n), (tx0, ty0), (n_in, n_on), g in zip(sizes, moves, counts, geos):
        inside = n_in / max(1, n_obj)
        n_ring = n - n_obj
        ring = n_on / n_ring if n_ring else 1.0
        out.append(DrawnTest(float(tx0), float(ty0), float(inside), float(ring),
                             inside >= pl.min_inside and ring >= pl.min_ring_content, g))
    return out


def _drawn_counts_one(g: _DrawnGeometry, move: tuple[float, float], n_obj: int, padded: np.ndarray, w: int, h: int,
                      pl: "Placement") -> tuple[int, int]:
    """(object points on content, ring points on tissue) of one object at its drawn position."""
    vals = padded.take(_padded_index(g.px + move[0], g.py + move[1], w, h))
    on_content = int(np.count_nonzero(vals[:n_obj] > pl.content_threshold))
    return on_content, int(np.count_nonzero(vals[n_obj:] >= pl.air_threshold))


def _drawn_counts(geos: list[_DrawnGeometry], moves: list[tuple[float, float]], sizes: list[tuple[int, int]],
                  padded: np.ndarray, w: int, h: int, pl: "Placement") -> list[tuple[int, int]]:
    """:func:`_drawn_counts_one` of several objects in one lookup."""
    xs = np.concatenate([g.px + tx0 for g, (tx0, _) in zip(geos, moves)])
    ys = np.concatenate([g.py + ty0 for g, (_, ty0) in zip(geos, moves)])
    vals = padded.take(_padded_index(xs, ys, w, h))
    obj = np.zeros(vals.size, dtype=bool)  # which entries are object points (the rest: rings)
    start = 0
    for n_obj, n in sizes:
        obj[start:start + n_obj] = True
        start += n
    hit = np.where(obj, vals > pl.content_threshold, vals >= pl.air_threshold)
    cum = np.concatenate(([0], np.cumsum(hit)))
    out, start = [], 0
    for n_obj, n in sizes:
        out.append((int(cum[start + n_obj] - cum[start]), int(cum[start + n] - cum[start + n_obj])))
        start += n
    return out


# =============================================================================================
