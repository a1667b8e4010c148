"""Random transforms T / T' of the synthesis (paper Eq. 1-3): sample parameters first, apply second.

TorchIO style: :func:`sample_params` draws a :class:`TransformParams` (plain floats and bools,
JSON-exact) from :class:`TransformRanges` with a caller-supplied ``np.random.Generator``; the
``apply`` functions below are pure functions of (array, params) with no randomness, so a sample can
be regenerated from its recorded parameters bit for bit.

Geometry: one combined 2x3 affine per object (frame resampling, flip, scale, rotation about the
object's centre, translation), applied with ``cv2.warpAffine`` (INTER_LINEAR for images,
INTER_NEAREST for labels, constant 0 outside the source). Coordinates are (x = column, y = row)
with pixel centres on integers, OpenCV's convention. Rotation angles are degrees, positive =
counter-clockwise as displayed (``cv2.getRotationMatrix2D``'s convention). Order of operations on
an image: geometry, then Gaussian blur, then intensity ``clip(gain * x ** gamma + shift, 0, 1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import cv2
import numpy as np


@dataclass(frozen=True)
class TransformRanges:
    """Ranges from which one random transform is drawn. Ranges are ``(low, high)``, inclusive.

    ``scale`` and ``gamma`` are drawn log-uniformly (so 0.8..1.25 is symmetric about 1), the others
    uniformly. ``max_shift`` bounds the translation as a fraction of the output width/height.
    A blur is applied with probability ``blur_prob``; otherwise ``blur_sigma`` is recorded as 0.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    rotation: tuple[float, float] = (0.0, 0.0)  # degrees
    flip_h_prob: float = 0.0  # mirror left-right (about the object's centre)
    flip_v_prob: float = 0.0  # mirror up-down
    max_shift: float = 0.0  # fraction of output size
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # pixels
    gain: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    shift: tuple[float, float] = (0.0, 0.0)  # added after gain/gamma, in [0, 1] intensity units

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class TransformParams:
    """One drawn transform. Everything a pure apply function needs, as JSON-exact Python scalars."""

    scale: float = 1.0
    rotation: float = 0.0  # degrees, counter-clockwise as displayed
    flip_h: bool = False
    flip_v: bool = False
    tx: float = 0.0  # translation in output pixels (x = columns)
    ty: float = 0.0  # (y = rows)
    blur_sigma: float = 0.0  # 0 = no blur
    gain: float = 1.0
    gamma: float = 1.0
    shift: float = 0.0

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in _PARAM_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "TransformParams":
        return cls(**{f: (bool(d[f]) if f in _BOOL_FIELDS else float(d[f])) for f in _PARAM_FIELDS})

    def with_translation(self, tx: float, ty: float) -> "TransformParams":
        """A copy with another translation (positional: the field order above)."""
        return TransformParams(self.scale, self.rotation, self.flip_h, self.flip_v, tx, ty, self.blur_sigma,
                               self.gain, self.gamma, self.shift)

    def replace(self, **kw) -> "TransformParams":
        d = self.to_dict()  # (dataclasses.replace re-validates fields; this is ~5x cheaper)
        d.update(kw)
        return TransformParams(**d)


_PARAM_FIELDS = tuple(f.name for f in fields(TransformParams))
_BOOL_FIELDS = frozenset(("flip_h", "flip_v"))


def _lin(u: float, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo + (hi - lo) * u) if hi > lo else float(lo)


def _log(u: float, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    if hi <= lo:
        return float(lo)
    # Clamp: exp(log(x)) may round a hair outside [lo, hi].
    return float(min(max(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u), lo), hi))


N_DRAWS = 11  # uniforms consumed by one sample_params call, whatever the ranges


def sample_params(rng: np.random.Generator, ranges: TransformRanges, out_shape: tuple[int, int]) -> TransformParams:
    """Draw one transform from one batch of ``N_DRAWS`` uniforms (fixed, so changing one range or
    probability never reshuffles the other parameters)."""
    h, w = out_shape
    u = rng.random(N_DRAWS).tolist()
    return TransformParams(
        scale=_log(u[0], ranges.scale),
        rotation=_lin(u[1], ranges.rotation),
        flip_h=u[2] < ranges.flip_h_prob,
        flip_v=u[3] < ranges.flip_v_prob,
        tx=(2.0 * u[4] - 1.0) * ranges.max_shift * w,
        ty=(2.0 * u[5] - 1.0) * ranges.max_shift * h,
        blur_sigma=_lin(u[7], ranges.blur_sigma) if u[6] < ranges.blur_prob else 0.0,
        gain=_lin(u[8], ranges.gain),
        gamma=_log(u[9], ranges.gamma),
        shift=_lin(u[10], ranges.shift),
    )


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------

class Affine(NamedTuple):
    """A forward map ``p_dst = A @ p_src + b`` in plain floats (2x2 numpy is slower than the math)."""

    a00: float
    a01: float
    a10: float
    a11: float
    b0: float
    b1: float

    @property
    def a(self) -> np.ndarray:
        return np.array([[self.a00, self.a01], [self.a10, self.a11]])

    @property
    def b(self) -> np.ndarray:
        return np.array([self.b0, self.b1])

    def translated(self, tx: float, ty: float) -> "Affine":
        return self._replace(b0=self.b0 + tx, b1=self.b1 + ty)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) points (x, y) -> their images."""
        x, y = points[:, 0], points[:, 1]
        return np.stack([self.a00 * x + self.a01 * y + self.b0, self.a10 * x + self.a11 * y + self.b1], axis=1)

    def apply_xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images of points given as separate x and y arrays."""
        return self.a00 * x + self.a01 * y + self.b0, self.a10 * x + self.a11 * y + self.b1

    def bbox(self, box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """Extent (x0, y0, x1, y1) in destination pixels of a source pixel box (y0, y1, x0, x1 inclusive)."""
        y0, y1, x0, x1 = box
        xa, xb, ya, yb = x0 - 0.5, x1 + 0.5, y0 - 0.5, y1 + 0.5
        a00, a01, a10, a11, b0, b1 = self
        # the four corners' images (same arithmetic as mapping each corner)
        p0, p1, p2, p3 = a00 * xa + a01 * ya + b0, a00 * xa + a01 * yb + b0, a00 * xb + a01 * ya + b0, a00 * xb + a01 * yb + b0
        q0, q1, q2, q3 = a10 * xa + a11 * ya + b1, a10 * xa + a11 * yb + b1, a10 * xb + a11 * ya + b1, a10 * xb + a11 * yb + b1
        return min(p0, p1, p2, p3), min(q0, q1, q2, q3), max(p0, p1, p2, p3), max(q0, q1, q2, q3)

    def inverse_matrix(self, dst_offset: tuple[int, int] = (0, 0), src_offset: tuple[int, int] = (0, 0)) -> np.ndarray:
        """2x3 matrix for ``cv2.warpAffine(..., WARP_INVERSE_MAP)`` rendering the destination window
        whose top-left pixel is ``dst_offset`` (x, y), reading a source crop whose top-left is ``src_offset``."""
        det = self.a00 * self.a11 - self.a01 * self.a10
        i00, i01, i10, i11 = self.a11 / det, -self.a01 / det, -self.a10 / det, self.a00 / det
        ox, oy = dst_offset[0] - self.b0, dst_offset[1] - self.b1
        return np.array([[i00, i01, i00 * ox + i01 * oy - src_offset[0]],
                         [i10, i11, i10 * ox + i11 * oy - src_offset[1]]])


def forward_affine(params: TransformParams, center: tuple[float, float], src_shape: tuple[int, int],
                   dst_shape: tuple[int, int], *, with_translation: bool = True) -> Affine:
    """The forward map of an object transform.

    The source frame is first resampled to the destination frame in relative coordinates (pixel
    edges align: ``q = (p + 0.5) * dst/src - 0.5``); then flip, scale and rotation act about the
    object's centre ``center`` (x, y in source pixels, mapped into the destination frame), and the
    translation (tx, ty) is added: ``p_dst = c + t + R S F (q - c)``.
    """
    hs, ws = src_shape
    hd, wd = dst_shape
    dx, dy = wd / ws, hd / hs
    ex, ey = 0.5 * dx - 0.5, 0.5 * dy - 0.5
    cx, cy = center[0] * dx + ex, center[1] * dy + ey  # centre in destination coordinates
    theta = math.radians(params.rotation)
    cos, sin = math.cos(theta) * params.scale, math.sin(theta) * params.scale
    fx = -1.0 if params.flip_h else 1.0
    fy = -1.0 if params.flip_v else 1.0
    # R S F, counter-clockwise as displayed (y points down), as cv2.getRotationMatrix2D.
    m00, m01, m10, m11 = cos * fx, sin * fy, -sin * fx, cos * fy
    tx, ty = (params.tx, params.ty) if with_translation else (0.0, 0.0)
    return Affine(m00 * dx, m01 * dy, m10 * dx, m11 * dy,
                  cx + tx + m00 * (ex - cx) + m01 * (ey - cy), cy + ty + m10 * (ex - cx) + m11 * (ey - cy))


_WARP_IMAGE = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
_WARP_LABEL = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP


def warp_image(src: np.ndarray, inv: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Linear resampling of a float32 image; 0 outside the source."""
    return cv2.warpAffine(src, inv, size_wh, flags=_WARP_IMAGE, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_image_window(src: np.ndarray, inv: np.ndarray, origin: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
    """The window ``size_wh`` at ``origin`` (x, y) of ``warp_image(src, inv, frame)``, rendered alone.

    ``cv2.remap`` with maps computed from absolute frame coordinates: every pixel gets the value
    it gets when the whole frame is rendered this way, whatever the window (``warpAffine`` with a
    shifted matrix rounds differently). Maps in float32: ~1e-5 px error, far below the 1/32 px
    of OpenCV's interpolation table.
    """
    x0, y0 = origin
    w, h = size_wh
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    map_x = np.add.outer((inv[0, 1] * ys + inv[0, 2]).astype(np.float32), (inv[0, 0] * xs).astype(np.float32))
    map_y = np.add.outer((inv[1, 1] * ys + inv[1, 2]).astype(np.float32), (inv[1, 0] * xs).astype(np.float32))
    return cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_label(src: np.ndarray, inv: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a uint8 label (only values already present can appear); 0 outside."""
    return cv2.warpAffine(src, inv, size_wh, flags=_WARP_LABEL, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ---------------------------------------------------------------------------------------------
# Intensity
# ---------------------------------------------------------------------------------------------

def blur_pad(sigma: float) -> int:
    """Pixels a Gaussian blur of ``sigma`` reaches (OpenCV's kernel radius for float images)."""
    return 0 if sigma <= 0 else int(round(sigma * 4)) + 1


def apply_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def apply_intensity(img: np.ndarray, gain: float, gamma: float, shift: float) -> np.ndarray:
    """``clip(gain * img ** gamma + shift, 0, 1)`` in float32, in place when ``img`` is writeable.

    Inputs are >= 0 (bank images are clipped to [0, 1]; linear warps and Gaussian blurs keep them
    so). ``x ** gamma`` is computed as ``exp(gamma * log x)``, with the gain folded in as
    ``+ log gain``: numpy's SIMD log/exp take half the time of ``np.power`` (the results agree to a
    few float32 ulps). log 0 = -inf and exp(-inf) = 0, so 0 stays exactly 0 when shift is 0 (a black
    MRI background stays black). All steps are elementwise (thread-count independent).
    """
    out = img if img.flags.writeable else img.copy()
    if gamma != 1.0:
        with np.errstate(divide="ignore"):  # log(0) = -inf on purpose
            np.log(out, out=out)
        out *= np.float32(gamma)
        if gain > 0.0 and gain != 1.0:
            out += np.float32(math.log(gain))
        np.exp(out, out=out)
        if gain <= 0.0:
            out *= np.float32(gain)
    elif gain != 1.0:
        out *= np.float32(gain)
    if shift != 0.0:
        out += np.float32(shift)
    np.clip(out, np.float32(0.0), np.float32(1.0), out=out)
    return out


def apply_photometric(img: np.ndarray, params: TransformParams) -> np.ndarray:
    """Blur then intensity, as recorded in ``params``."""
    return apply_intensity(apply_blur(img, params.blur_sigma), params.gain, params.gamma, params.shift)
