"""In-plane pixel spacing: resampling slices to a common spacing and back (issue 30, item 4).

``--spacing MM`` (synth select / build / pack, train eval / predict) resamples every slice of a
volume to MM x MM pixels in-plane; the slice axis is never touched (slice indices keep their
meaning). ``native`` (the default of every dataset, :data:`DEFAULT_SPACING`) leaves slices as
stored.

- Images: area averaging when both in-plane axes shrink (``cv2.INTER_AREA``), bilinear otherwise
  (``cv2.INTER_LINEAR``); the field of view is kept (the new size is ``round(n * spacing / MM)``,
  so the pixel size actually reached is ``spacing * n / new_n``, recorded).
- Labels: nearest neighbour at pixel centres (``cv2.INTER_NEAREST_EXACT``, as ``train.resize``),
  then every class a slice held and lost (a small organ at downsampling) is put back on the new
  pixels under its own pixel centres (two lost classes under one pixel: the later one takes the
  nearest pixel no other class needs): a class present in a slice stays present in it, as long as
  the slice has pixels enough.
- Affines follow the pixel-centre convention: new voxel (i', j') is at old continuous index
  ``(i' + 0.5) * n / n' - 0.5``.

Everything works on all slices at once (one OpenCV call per axis for the whole stack).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from shared.errors import ConfigError

NATIVE = "native"
MIN_SPACING, MAX_SPACING = 0.05, 20.0  # mm: outside this a value is a typo (metres, microns)
# The default in-plane spacing of each source: native everywhere. BraTS is 1 mm isotropic already
# (native == 1 mm); the Synapse sample is 3 mm and the real Synapse scans 0.54-0.98 mm, but the
# model input stretches the whole slice to img_size (train.resize.InputGeometry), so a common pixel
# size alone does not change what the model sees (docs/spacing.md) and a changed default would only
# change the reference builds' bytes. Pass --spacing MM to mix volumes of different pixel sizes.
DEFAULT_SPACING: dict[str, float | None] = {
    "brats": None, "synapse": None, "transunet": None, "nifti": None, "dicom": None,
    "demo-brain": None, "demo-abdomen": None,
}


def parse_spacing(value: Any, what: str = "--spacing") -> float | None:
    """``native`` / None -> None; a number of mm (``1``, ``0.7``, ``"0.98"``) -> float.
    Anything else is a one-line ConfigError naming the value."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("mm").strip()
        if text == NATIVE:
            return None
        try:
            mm = float(text)
        except ValueError:
            raise ConfigError(f"{what} {value!r}: expected a pixel size in mm (e.g. 1 or 0.7) or 'native'") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        mm = float(value)
    else:
        raise ConfigError(f"{what} {value!r}: expected a pixel size in mm (e.g. 1 or 0.7) or 'native'")
    if not math.isfinite(mm) or not MIN_SPACING <= mm <= MAX_SPACING:
        raise ConfigError(f"{what} {value!r}: the pixel size must be between {MIN_SPACING} and {MAX_SPACING} mm")
    return mm


def default_spacing(dataset: str) -> float | None:
    """The in-plane spacing a dataset is read at when --spacing is not given (None: native)."""
    return DEFAULT_SPACING.get("demo-brain" if dataset == "demo" else dataset)


def spacing_record(mm: float | None) -> str | float:
    """How manifests and summaries record a spacing: ``"native"`` or the mm value."""
    return NATIVE if mm is None else float(mm)


def resampled_hw(hw: tuple[int, int], spacing_rc: tuple[float, float], mm: float) -> tuple[int, int]:
    """(rows, cols) of an (h, w) slice of pixel size ``spacing_rc`` (mm along rows, cols) at ``mm``."""
    return tuple(max(1, int(round(n * s / mm))) for n, s in zip(hw, spacing_rc))  # type: ignore[return-value]


def _resize_stack(arr: np.ndarray, out_hw: tuple[int, int], interpolation: int) -> np.ndarray:
    """(S, h, w) or (h, w) -> (S, H, W) / (H, W). The three interpolations used here are separable
    (products of 1-D weights), so the stack is resized as two 2-D images, columns then rows: one
    OpenCV call per axis for all slices, no channel limit."""
    import cv2

    squeeze = arr.ndim == 2
    stack = arr[None] if squeeze else arr
    s, h, w = stack.shape
    H, W = out_hw
    out = np.ascontiguousarray(stack)
    if W != w:  # rows of every slice side by side: (S*h, w) -> (S*h, W)
        out = cv2.resize(out.reshape(s * h, w), (W, s * h), interpolation=interpolation).reshape(s, h, W)
    if H != h:  # columns: (S*W, h) -> (S*W, H)
        cols = np.ascontiguousarray(out.transpose(0, 2, 1)).reshape(s * W, h)
        out = cv2.resize(cols, (H, s * W), interpolation=interpolation).reshape(s, W, H).transpose(0, 2, 1)
    out = np.ascontiguousarray(out)
    return out[0] if squeeze else out


def resample_image(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Float slices (S, h, w) or one (h, w) -> float32 at (H, W): area when shrinking, else bilinear."""
    import cv2

    image = np.asarray(image, np.float32)
    hw = image.shape[-2:]
    if tuple(hw) == tuple(out_hw):
        return image
    shrink = out_hw[0] <= hw[0] and out_hw[1] <= hw[1]
    return _resize_stack(image, tuple(out_hw), cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resample_label(label: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Integer labels (S, h, w) or (h, w) -> uint8 at (H, W), nearest at pixel centres; no class a
    slice holds is lost (see the module docstring)."""
    import cv2

    label = np.asarray(label).astype(np.uint8, copy=False)
    hw = label.shape[-2:]
    if tuple(hw) == tuple(out_hw):
        return label
    squeeze = label.ndim == 2
    src = label[None] if squeeze else label
    out = _resize_stack(src, tuple(out_hw), cv2.INTER_NEAREST_EXACT)
    n = int(src.max(initial=0)) + 1
    if n > 1:
        before = _presence(src, n)
        missing = np.argwhere(before & ~_presence(out, n))
        if len(missing):
            h, w = hw
            rows = np.minimum(((np.arange(h) + 0.5) * out_hw[0] / h).astype(np.int64), out_hw[0] - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * out_hw[1] / w).astype(np.int64), out_hw[1] - 1)
            # smallest classes last: they win a pixel two lost classes would share
            sizes = [int(np.count_nonzero(src[k] == c)) for k, c in missing]
            for i in np.argsort(sizes)[::-1]:
                k, c = missing[i]
                rr, cc = np.nonzero(src[k] == c)
                out[k, rows[rr], cols[cc]] = c
            for k, c in missing:  # several lost classes under one target pixel: the nearest free pixel
                if not (out[k] == c).any():
                    _nearest_free(out[k], src[k] == c, c, rows, cols, n)
    return out[0] if squeeze else out


def _nearest_free(out_slice: np.ndarray, mask: np.ndarray, c: int, rows: np.ndarray, cols: np.ndarray,
                  n: int) -> None:
    """Give class ``c`` the target pixel nearest to its mapped centroid whose class holds more than
    one pixel (so taking it loses no other class)."""
    rr, cc = np.nonzero(mask)
    centre = np.array([rows[rr].mean(), cols[cc].mean()])
    counts = np.bincount(out_slice.ravel(), minlength=n)
    free = counts[out_slice] > 1
    if not free.any():
        return  # more classes than pixels: nothing to give
    fr, fc = np.nonzero(free)
    j = int(np.argmin((fr - centre[0]) ** 2 + (fc - centre[1]) ** 2))
    out_slice[fr[j], fc[j]] = c


def _presence(stack: np.ndarray, n: int) -> np.ndarray:
    """(S, n) bool: class c occurs in slice k."""
    s = stack.shape[0]
    flat = stack.reshape(s, -1).astype(np.int64) + (np.arange(s, dtype=np.int64) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=s * n).reshape(s, n) > 0


def resampled_affine(affine: np.ndarray, hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """The 4x4 affine of slices resampled from (h, w) to (H, W) (index (i, j, k) = (col, row, slice))."""
    sx, sy = hw[1] / out_hw[1], hw[0] / out_hw[0]
    step = np.array([[sx, 0, 0, 0.5 * sx - 0.5], [0, sy, 0, 0.5 * sy - 0.5], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.asarray(affine, np.float64) @ step


def target_geometry(shape: tuple[int, ...], spacing: tuple[float, float, float], affine: np.ndarray,
                    mm: float | None) -> tuple[tuple[int, int], tuple[float, float, float], np.ndarray]:
    """((H, W), spacing (S, R, C), affine) of a slice-first volume resampled to ``mm`` in-plane
    (``mm`` None: unchanged)."""
    hw = (int(shape[-2]), int(shape[-1]))
    if mm is None:
        return hw, tuple(float(s) for s in spacing), np.asarray(affine, np.float64)  # type: ignore[return-value]
    out_hw = resampled_hw(hw, (spacing[1], spacing[2]), mm)
    new_spacing = (float(spacing[0]), spacing[1] * hw[0] / out_hw[0], spacing[2] * hw[1] / out_hw[1])
    return out_hw, new_spacing, resampled_affine(affine, hw, out_hw)


def resample_volume(vol, mm: float | None):
    """A ``shared.volume.Volume`` (or any dataclass with image, label, spacing, affine) at ``mm``
    in-plane; ``meta["native"]`` keeps the original shape, spacing and affine. ``mm`` None, or a
    volume already on that grid: returned as is."""
    if mm is None:
        return vol
    out_hw, spacing, affine = target_geometry(vol.label.shape, vol.spacing, vol.affine, mm)
    if tuple(out_hw) == tuple(vol.label.shape[-2:]):
        return vol
    changes: dict[str, Any] = dict(image=resample_image(vol.image, out_hw), label=resample_label(vol.label, out_hw),
                                   spacing=spacing, affine=affine)
    if hasattr(vol, "meta"):
        changes["meta"] = {**vol.meta, "native": {"shape": [int(n) for n in vol.label.shape],
                                                  "spacing": [float(s) for s in vol.spacing],
                                                  "affine": np.asarray(vol.affine, np.float64).tolist()}}
    return replace(vol, **changes)


def map_points(xy, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """(x, y) pixel coordinates (..., 2) of an (h, w) slice -> those of the same place in (H, W)
    (pixel-centre convention, clipped inside)."""
    xy = np.asarray(xy, np.float64)
    scale = np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])
    out = (xy + 0.5) * scale - 0.5
    return np.clip(out, 0, np.array([to_hw[1] - 1, to_hw[0] - 1]))


__all__ = ["DEFAULT_SPACING", "NATIVE", "default_spacing", "map_points", "parse_spacing", "resample_image",
           "resample_label", "resample_volume", "resampled_affine", "resampled_hw", "spacing_record",
           "target_geometry"]
