"""The pixel checks of the anatomy rule: the ring of an object (pixels 2-4 px outside it), what
counts as air, and the "floating object" measure on a finished sample (image + label): an object
floats when more than half of its ring is air (intensity < 0.04). Used by the synthesis
(:mod:`synth.synthesis.sample`), ``synth info`` (:mod:`synth.audit.info`) and the ring subsample of
:mod:`synth.synthesis.background_choice`.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

RING_INNER_PX = 2.0  # the ring of an object: pixels at distance 2..4 px from it
RING_OUTER_PX = 4.0
AIR_THRESHOLD = 0.04  # "air": normalised intensity below this
FLOAT_AIR_FRACTION = 0.5  # an object floats when more than this share of its ring is air


# =============================================================================================
# Ring geometry
# =============================================================================================

def _disk(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy <= radius * radius).astype(np.uint8)


# Exact Euclidean distances on the pixel grid: dist <= 4 is a dilation by the radius-4 disk;
# dist < 2 (the values 1 and sqrt 2) a dilation by the radius-sqrt(2) disk (the 3x3 square).
_OUTER = _disk(RING_OUTER_PX)
_INNER = _disk(math.sqrt(2.0))


def ring_mask(mask: np.ndarray) -> np.ndarray:
    """Pixels at Euclidean distance RING_INNER_PX..RING_OUTER_PX from ``mask`` (bool, same shape).
    Only pixels inside the array are considered (the caller pads if the ring must not be cut)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    outer = cv2.dilate(m, _OUTER)
    inner = cv2.dilate(m, _INNER)
    return (outer > inner)



# =============================================================================================

def object_masks(label: np.ndarray, task: str, classes=None) -> list[np.ndarray]:
    """The pasted objects of a sample: all foreground (single task) or each class present (multi;
    ``classes``: the classes to look at, default those in the label)."""
    if task == "single":
        return [label > 0]
    if classes is None:
        classes = [int(c) for c in np.flatnonzero(np.bincount(label.ravel()))[1:]] if label.any() else []
    return [label == c for c in classes]


def ring_air_fraction(image: np.ndarray, mask: np.ndarray, air: float = AIR_THRESHOLD) -> float:
    """Share of an object's ring (pixels 2-4 px outside it, inside the frame) that is air."""
    x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    if bw == 0:
        return 0.0
    pad = int(math.ceil(RING_OUTER_PX)) + 1
    h, w = mask.shape
    y0, y1 = max(y - pad, 0), min(y + bh + pad, h)
    x0, x1 = max(x - pad, 0), min(x + bw + pad, w)
    ring = ring_mask(mask[y0:y1, x0:x1])
    n = int(np.count_nonzero(ring))
    if n == 0:
        return 0.0
    return float(np.count_nonzero(ring & (image[y0:y1, x0:x1] < air))) / n


def floating_objects(image: np.ndarray, label: np.ndarray, task: str, classes=None) -> tuple[int, float]:
    """(number of floating objects, the largest ring air share) of one sample."""
    worst, n = 0.0, 0
    img = np.asarray(image, dtype=np.float32)
    for m in object_masks(np.asarray(label), task, classes):
        f = ring_air_fraction(img, m)
        worst = max(worst, f)
        n += f > FLOAT_AIR_FRACTION
    return n, worst
