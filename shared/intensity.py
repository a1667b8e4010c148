"""Intensity presets: how a raw scan becomes float32 values in [0, 1].

A preset is a small JSON-able dict, recorded in every manifest so that `train predict` can apply
exactly what synthesis applied:

- ``{"kind": "clip", "low": L, "high": H}``: clip to [L, H] then scale linearly to [0, 1]
  (CT: the TransUNet/Synapse window is L = -125, H = 275 HU).
- ``{"kind": "minmax", "per": "slice"}``: each slice (along the NIfTI's third axis) scaled by its
  own min and max, as the paper does for BraTS MRI; ``"per": "volume"`` uses the whole volume's.
  A constant slice (or volume) becomes all 0.
- ``{"kind": "minmax", "per": "slice", "upper_percentile": 99.5}``: the same, but the top of the
  range is that percentile of the slice's (volume's) content voxels (those above its minimum),
  and brighter voxels are clipped to 1. Robust to single outlier voxels (some BraTS LGG FLAIR
  volumes hold voxels of 32767 that squeeze the brain into a few grey levels under plain
  min-max). The minimum stays the minimum, so background stays exactly 0.
- ``"lower_percentile": q`` as well: the bottom of the range is that percentile of the content
  voxels instead of the minimum (darker voxels, the background among them, clipped to 0). With
  ``"per": "volume"``, 0.5 and 99.5 this is MedSAM's MR preprocessing (clip to the 0.5 / 99.5
  percentiles of the volume's non-zero voxels, scale to [0, 1], background 0), "content" being
  the voxels above the volume's minimum so that z-scored volumes, whose background is their
  minimum rather than 0, are read the same way.

Named presets (``PRESETS``) can stand in for the dict in config files and on the command line
(``--intensity``): ``"ct-abdomen"``, ``"mri-slice-minmax"``, ``"volume-minmax"``,
``"mri-slice-p99.5"``, and the LiteMedSAM input contract's ``"mr-medsam"`` and ``"ct-medsam"``
(window level 40, width 400 HU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.arrays import row_counts
from shared.errors import ConfigError

CT_ABDOMEN: dict[str, Any] = {"kind": "clip", "low": -125.0, "high": 275.0}
SLICE_MINMAX: dict[str, Any] = {"kind": "minmax", "per": "slice"}
VOLUME_MINMAX: dict[str, Any] = {"kind": "minmax", "per": "volume"}

SLICE_P995: dict[str, Any] = {"kind": "minmax", "per": "slice", "upper_percentile": 99.5}
# MedSAM's pre_CT_MR.py: MR clipped to the volume's 0.5 / 99.5 content percentiles; CT window 40 / 400.
MR_MEDSAM: dict[str, Any] = {"kind": "minmax", "per": "volume", "lower_percentile": 0.5,
                             "upper_percentile": 99.5}
CT_MEDSAM: dict[str, Any] = {"kind": "clip", "low": -160.0, "high": 240.0}

PRESETS: dict[str, dict[str, Any]] = {
    "ct-abdomen": CT_ABDOMEN,
    "mri-slice-minmax": SLICE_MINMAX,
    "volume-minmax": VOLUME_MINMAX,
    "mri-slice-p99.5": SLICE_P995,
    "mr-medsam": MR_MEDSAM,
    "ct-medsam": CT_MEDSAM,
}


def parse_preset_option(text: str | None) -> str | dict | None:
    """An `--intensity` value: a preset name, or a JSON object (validated later by the source)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--intensity {text!r}: not valid JSON ({exc.msg})") from None
    return text


def validate_preset(preset: Any, where: str = "intensity preset") -> dict[str, Any]:
    """Return a normalised copy of ``preset`` (a dict or a preset name); ConfigError if invalid."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        return dict(PRESETS[preset])
    if not isinstance(preset, dict) or "kind" not in preset:
        raise ConfigError(f"{where}: expected a preset name or an object with 'kind' "
                          f"('clip' or 'minmax'), got {preset!r}")
    kind = preset["kind"]
    if kind == "clip":
        try:
            low, high = float(preset["low"]), float(preset["high"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: a 'clip' preset needs numeric 'low' and 'high', got {preset!r}") from None
        if not np.isfinite([low, high]).all() or not low < high:
            raise ConfigError(f"{where}: clip window needs finite low < high, got low={low}, high={high}")
        return {"kind": "clip", "low": low, "high": high}
    if kind == "minmax":
        per = preset.get("per", "slice")
        if per not in ("slice", "volume"):
            raise ConfigError(f"{where}: 'minmax' preset 'per' must be 'slice' or 'volume', got {per!r}")
        unknown = sorted(set(preset) - {"kind", "per", "upper_percentile", "lower_percentile"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} in a 'minmax' preset "
                              "(known: per, lower_percentile, upper_percentile)")
        out: dict[str, Any] = {"kind": "minmax", "per": per}
        for key, low, high in (("lower_percentile", 0.0, 50.0), ("upper_percentile", 50.0, 100.0)):
            if key not in preset:
                continue
            q = preset[key]
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not low <= float(q) <= high:
                raise ConfigError(f"{where}: {key!r} must be a number in [{low:g}, {high:g}], got {q!r}")
            out[key] = float(q)
        return out
    raise ConfigError(f"{where}: unknown preset kind {kind!r} (expected 'clip' or 'minmax')")


def apply_intensity(volume: np.ndarray, preset: dict[str, Any]) -> np.ndarray:
    """Apply a preset to a (S, R, C) array (already slice-first); returns float32 in [0, 1]."""
    preset = validate_preset(preset)
    x = np.asarray(volume, dtype=np.float32)
    if preset["kind"] == "clip":
        low, high = np.float32(preset["low"]), np.float32(preset["high"])
        out = np.clip(x, low, high)
        out -= low
        out /= high - low  # divide (not multiply by the inverse): bit-identical to TransUNet's data
        return np.clip(out, 0.0, 1.0, out=out)
    axes = (1, 2) if preset["per"] == "slice" else None
    if x.ndim == 2:
        axes = None
    lo = x.min(axis=axes, keepdims=True)
    if "upper_percentile" in preset:
        hi = _content_percentile(x, lo, preset["upper_percentile"], per_slice=axes is not None)
    else:
        hi = x.max(axis=axes, keepdims=True)
    if "lower_percentile" in preset:
        lo = _content_percentile(x, lo, preset["lower_percentile"], per_slice=axes is not None)
        lo = np.minimum(lo, hi)
    span = hi - lo
    out = x - lo
    np.divide(out, span, out=out, where=np.broadcast_to(span > 0, out.shape))
    # a constant slice is already all 0 after subtracting its minimum: no division by zero
    return np.clip(out, 0.0, 1.0, out=out)


def intensity_chunks(volume: np.ndarray, preset: dict[str, Any], chunk: int = 8):
    """Yield ``(k0, float32 slices k0..k0+n)`` of ``apply_intensity(volume, preset)``, a few slices at
    a time, bit-identical to the whole-volume result.

    Why: the float32 copy of a whole scan is 4x an int16 volume; slice by slice the work stays in
    the CPU cache (~25 % faster on a BraTS FLAIR) and never holds more than ``chunk`` slices. The
    clip and per-slice presets are elementwise / per slice, so chunks equal the whole; the
    per-volume min-max needs the whole volume's range and is computed in one go.
    """
    preset = validate_preset(preset)
    if preset["kind"] == "minmax" and preset["per"] == "volume" or np.ndim(volume) != 3:
        whole = apply_intensity(volume, preset)
        for k0 in range(0, whole.shape[0], chunk):
            yield k0, whole[k0:k0 + chunk]
        return
    for k0 in range(0, volume.shape[0], chunk):
        yield k0, apply_intensity(volume[k0:k0 + chunk], preset)


def _content_percentile(x: np.ndarray, lo: np.ndarray, q: float, *, per_slice: bool) -> np.ndarray:
    """The ``q``-th percentile of the voxels above the minimum ``lo``, per slice (S, 1, 1) or for the
    whole array (broadcastable like ``lo``); the minimum itself where nothing is above it."""
    if not per_slice:
        content = x[x > lo]
        return np.full_like(lo, np.percentile(content, q) if content.size else lo.item(), dtype=np.float32)
    out = lo.astype(np.float32).copy()
    for k in range(x.shape[0]):  # one vectorised percentile per slice
        content = x[k][x[k] > lo[k]]
        if content.size:
            out[k] = np.percentile(content, q)
    return out


@dataclass(frozen=True)
class ExactSliceMinMax:
    """The per-slice min-max preset of an integer scan, kept in integers.

    ``apply_intensity`` turns voxel ``x`` of slice ``k`` into ``float32(x - lo[k]) / float32(span[k])``
    (one correctly rounded float32 division; ``x - lo`` and ``span`` are exact in float32 for
    integers below 2**24). So any test on those floats that is monotone in ``x`` is a test on the
    integer offset ``x - lo``, and streaming scans can answer it with integer passes over the raw
    volume, leaving the float32 image to the few slices they keep (``image``): the same numbers,
    about a third of the work on a BraTS FLAIR (BENCHMARKS.md, issue 12).
    """

    raw: np.ndarray  # (S, R, C) integer voxels, slice-first
    lo: np.ndarray  # (S,) int64: each slice's minimum
    span: np.ndarray  # (S,) int64: its maximum minus its minimum

    @classmethod
    def of(cls, raw: np.ndarray, preset: dict[str, Any]) -> "ExactSliceMinMax | None":
        """For a 3D integer array under the plain per-slice min-max preset; None otherwise (then
        use ``apply_intensity``)."""
        if validate_preset(preset) != SLICE_MINMAX or raw.ndim != 3 or raw.dtype.kind not in "iu" or raw.shape[0] == 0:
            return None
        flat = raw.reshape(raw.shape[0], -1)
        lo, hi = flat.min(axis=1).astype(np.int64), flat.max(axis=1).astype(np.int64)
        if raw.dtype.itemsize > 2 and max(-int(lo.min()), int(hi.max())) >= 1 << 24:
            return None  # not exact in float32: the general path rounds as it does
        return cls(raw, lo, hi - lo)

    def first_above(self, level: float) -> np.ndarray:
        """(S,) per slice, the smallest offset ``d >= 0`` whose value ``float32(d) / float32(span)``
        is ``> level`` (a float32), or ``span + 1`` where none is. A constant slice (span 0) is all 0."""
        level = np.float32(level)
        span = self.span
        guess = np.floor(np.float64(level) * span).astype(np.int64)
        # The float32 rounding moves the boundary by less than one offset (spans < 2**24): test a
        # few offsets around the exact real-number boundary, then check the bracket.
        cand = np.clip(guess[:, None] + np.arange(-2, 4), 0, None)  # (S, 6), increasing
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = cand.astype(np.float32) / span[:, None].astype(np.float32)
        vals[span == 0] = 0.0  # apply_intensity leaves a constant slice at 0
        above = (vals > level) & (cand <= span[:, None])
        first = np.where(above.any(axis=1), cand[np.arange(len(span)), above.argmax(axis=1)], span + 1)
        below = np.where(first > 0, first - 1, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            prev = below.astype(np.float32) / span.astype(np.float32)
        prev[span == 0] = 0.0
        # the values rise with d, so "d - 1 is not above" proves d is the first (a guard: for spans
        # < 2**24 the boundary never leaves the window)
        if not ((first == 0) | (prev <= level)).all():
            raise AssertionError("ExactSliceMinMax.first_above: the boundary left its window")
        return first

    def count_at_least(self, offsets: np.ndarray) -> np.ndarray:
        """(S,) per slice, the number of voxels with ``x - lo >= offsets[k]`` (int64)."""
        S = self.raw.shape[0]
        flat = self.raw.reshape(S, -1)
        hi = self.lo + self.span
        reachable = offsets <= self.span
        # thresholds in the voxels' own dtype (a wider one would widen the whole comparison)
        thr = np.where(reachable, self.lo + offsets, hi).astype(self.raw.dtype)
        hits = np.greater_equal(flat, thr[:, None]).view(np.uint8)
        counts = row_counts(hits)
        counts[~reachable] = 0
        return counts

    def image(self, k: int) -> np.ndarray:
        """Slice ``k`` as float32, exactly ``apply_intensity(raw, preset)[k]``."""
        return apply_intensity(self.raw[k:k + 1], SLICE_MINMAX)[0]

    def offsets(self, k: int) -> np.ndarray:
        """Slice ``k``'s integer offsets ``x - lo`` as uint16 (spans up to 65535)."""
        if self.span[k] > 65535:
            raise ValueError(f"slice {k}: span {int(self.span[k])} does not fit uint16")
        row = self.raw[k]
        if row.dtype.itemsize <= 2:  # 16-bit wraparound arithmetic: x - lo is exact when it fits 0..65535
            return np.subtract(row.astype(np.uint16, copy=False) if row.dtype.itemsize == 1 else row.view(np.uint16),
                               np.uint16(int(self.lo[k]) & 0xFFFF), dtype=np.uint16)
        return (row.astype(np.int64) - self.lo[k]).astype(np.uint16)



def float_minmax_counts_above(raw: np.ndarray, level: float) -> np.ndarray | None:
    """(S,) per slice, how many voxels of a float32 (S, R, C) scan are above ``level`` after the
    per-slice min-max preset, ``apply_intensity(raw, SLICE_MINMAX) > float32(level)``, without the
    float32 copy; None for other dtypes.

    The preset maps ``x`` to ``clip(float32(x - lo) / float32(hi - lo), 0, 1)``: every step is a
    correctly rounded float32 operation that never decreases, so the voxels above the level are
    those ``>=`` the first float32 value above it. That value is found per slice by bisection over
    the float32 values between the slice's minimum and maximum (ordered by their bit patterns), each
    step evaluating the preset's own operations on one value per slice; then one comparison per
    voxel counts them. The same counts as the float32 path, about a third of its work (no float32
    volume, no second pass over it)."""
    if raw.dtype != np.float32 or raw.ndim != 3 or raw.shape[0] == 0:
        return None
    S = raw.shape[0]
    flat = raw.reshape(S, -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = hi - lo
    level = np.float32(level)

    def preset(values: np.ndarray) -> np.ndarray:  # apply_intensity's operations, one value per slice
        out = values - lo
        np.divide(out, span, out=out, where=span > 0)
        return np.clip(out, 0.0, 1.0, out=out)

    low_key, high_key = _ordered_key(lo), _ordered_key(hi)
    some = preset(hi.copy()) > level  # the maximum is the largest value: nothing above if it is not
    if preset(lo.copy())[some].max(initial=np.float32(0)) > level:
        raise AssertionError("float_minmax_counts_above: a slice's minimum is above the level")
    # invariant where ``some``: preset(low) <= level < preset(high)
    while True:
        gap = high_key - low_key
        active = some & (gap > 1)
        if not active.any():
            break
        mid = low_key + gap // 2
        above = preset(_from_key(mid)) > level
        high_key = np.where(active & above, mid, high_key)
        low_key = np.where(active & ~above, mid, low_key)
    first = _from_key(high_key)
    counts = row_counts(np.greater_equal(flat, first[:, None]))
    counts[~some] = 0
    return counts


def _ordered_key(values: np.ndarray) -> np.ndarray:
    """int64 keys that order float32 values as the floats are ordered (-0.0 and +0.0 alike)."""
    bits = values.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _from_key(keys: np.ndarray) -> np.ndarray:
    """The float32 values of :func:`_ordered_key` keys."""
    bits = np.where(keys < 0, (-keys) | 0x80000000, keys).astype(np.uint32)
    return bits.view(np.float32)
