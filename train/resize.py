"""Resizing images, labels, points and logits between a slice's size and the model's input.

Conventions: images and labels are resized to a square `size` x `size` (no aspect-preserving
padding; SAMed does the same). Coordinates are (x, y) = (column, row) pixel indices, and scaling
follows the pixel-centre convention of cv2.resize / F.interpolate(align_corners=False): pixel i
covers [i, i+1) and its centre i + 0.5 maps to (i + 0.5) * to / from, so
``x_new = (x + 0.5) * to_size / w - 0.5`` (clipped to [0, to_size - 1]).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float image -> (size, size) float32, bilinear (cv2.INTER_LINEAR)."""
    img = np.asarray(img, dtype=np.float32)
    if img.shape == (size, size):
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


# Nearest neighbour with the pixel-centre convention of the image resize. cv2.INTER_NEAREST takes
# source pixel floor(i * scale), which shifts a 240 -> 128 label by ~0.9 source pixels up-left of
# its bilinearly resized image (issue 18: up to 1.9 px, costing ~2.5 DSC points on a round trip);
# INTER_NEAREST_EXACT takes floor((i + 0.5) * scale), the pixel whose area holds the centre.
LABEL_INTERPOLATION = cv2.INTER_NEAREST_EXACT


def resize_label(lbl: np.ndarray, size: int) -> np.ndarray:
    """(H, W) integer label -> (size, size) uint8, nearest neighbour at pixel centres
    (cv2.INTER_NEAREST_EXACT: output pixel i takes input pixel floor((i + 0.5) * in / out))."""
    lbl = np.asarray(lbl)
    if lbl.shape == (size, size):
        return lbl.astype(np.uint8, copy=False)
    return cv2.resize(lbl.astype(np.uint8, copy=False), (size, size), interpolation=LABEL_INTERPOLATION)


def scale_points(xy, from_hw: tuple[int, int], to_size: int) -> np.ndarray:
    """Points (..., 2) as (x, y) in an (h, w) image -> float32 (x, y) in a to_size square."""
    xy = np.asarray(xy, dtype=np.float64)
    h, w = from_hw
    scale = np.array([to_size / w, to_size / h])
    out = (xy + 0.5) * scale - 0.5
    return np.clip(out, 0, to_size - 1).astype(np.float32)


def upsample_logits(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, C, S, S) logits -> (B, C, h, w), bilinear (align_corners=False)."""
    if tuple(logits.shape[-2:]) == tuple(hw):
        return logits
    return F.interpolate(logits, size=tuple(hw), mode="bilinear", align_corners=False)


RESIZE_MODES = ("square", "longest_side")


def longest_side_hw(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(rows, cols) of an (h, w) slice whose longest side is scaled to `size` (rounded as
    segment_anything's ResizeLongestSide and MedSAM's resize_longest_side: int(x + 0.5))."""
    h, w = int(hw[0]), int(hw[1])
    scale = size / max(h, w)
    return min(size, int(h * scale + 0.5)), min(size, int(w * scale + 0.5))


class InputGeometry:
    """Where an (h, w) slice lies in the model's square `size` input.

    ``"square"``: stretched to size x size (the functions above). ``"longest_side"``: the longest
    side scaled to `size`, aspect kept, zero padding at the bottom and right (LiteMedSAM). Points
    and boxes follow the pixel-centre convention of the module docstring along each axis, and
    logits are cropped to the slice's area before they are resized back.
    """

    def __init__(self, size: int, mode: str = "square"):
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
        self.size, self.mode = int(size), mode

    def __repr__(self) -> str:
        return f"InputGeometry({self.size}, {self.mode!r})"

    def content_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) the slice covers in the input."""
        if self.mode == "square":
            return self.size, self.size
        return longest_side_hw(hw, self.size)

    def image_into(self, img: np.ndarray, out: np.ndarray) -> None:
        """Write the input image of float slice `img` into `out` (size, size) float32."""
        img = np.asarray(img, dtype=np.float32)
        nh, nw = self.content_hw(img.shape)
        if (nh, nw) == img.shape:
            region = img
        else:
            # area averaging when shrinking (MedSAM: INTER_AREA), bilinear when enlarging
            shrink = nh < img.shape[0] or nw < img.shape[1]
            region = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink and self.mode != "square"
                                else cv2.INTER_LINEAR)
        out[:nh, :nw] = region
        out[nh:, :] = 0
        out[:nh, nw:] = 0

    def image(self, img: np.ndarray) -> np.ndarray:
        if self.mode == "square":
            return resize_image(img, self.size)
        out = np.empty((self.size, self.size), np.float32)
        self.image_into(img, out)
        return out

    def label_into(self, lbl: np.ndarray, out: np.ndarray) -> None:
        lbl = np.asarray(lbl).astype(np.uint8, copy=False)
        nh, nw = self.content_hw(lbl.shape)
        region = lbl if (nh, nw) == lbl.shape else cv2.resize(lbl, (nw, nh), interpolation=LABEL_INTERPOLATION)
        out[:nh, :nw] = region
        out[nh:, :] = 0
        out[:nh, nw:] = 0

    def label(self, lbl: np.ndarray) -> np.ndarray:
        if self.mode == "square":
            return resize_label(lbl, self.size)
        out = np.empty((self.size, self.size), np.uint8)
        self.label_into(lbl, out)
        return out

    def points(self, xy, hw: tuple[int, int]) -> np.ndarray:
        """Points (..., 2) as (x, y) pixels of an (h, w) slice -> float32 (x, y) in the input."""
        if self.mode == "square":
            return scale_points(xy, hw, self.size)
        xy = np.asarray(xy, dtype=np.float64)
        nh, nw = self.content_hw(hw)
        out = (xy + 0.5) * np.array([nw / hw[1], nh / hw[0]]) - 0.5
        return np.clip(out, 0, np.array([nw - 1, nh - 1])).astype(np.float32)

    def boxes(self, boxes, hw: tuple[int, int]) -> np.ndarray:
        """Boxes (..., 4) as (x0, y0, x1, y1) pixel indices of an (h, w) slice -> the input's."""
        b = np.asarray(boxes, dtype=np.float64)
        corners = self.points(b.reshape(*b.shape[:-1], 2, 2), hw)
        return corners.reshape(b.shape).astype(np.float32)

    def logits_to_slice(self, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, C, size, size) logits -> (B, C, h, w): the slice's area cropped, resized bilinearly."""
        nh, nw = self.content_hw(hw)
        return upsample_logits(logits[..., :nh, :nw], hw)


# In-place variants for the batch stream (train.data): the batch slot is written directly.

def resize_image_into(image: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = resize_image(image, size)``, written in place.

    float16 -> float32 through OpenCV (``x - 0.0``: exact for every float16, -0.0 included; ~3x
    numpy's cast), then ``cv2.resize`` (INTER_LINEAR) with ``dst`` the batch slot."""
    if image.dtype == np.float16:
        image = cv2.subtract(image, 0.0, dtype=cv2.CV_32F)
    else:
        image = np.asarray(image, dtype=np.float32)
    if image.shape == out.shape:
        out[...] = image
        return
    res = cv2.resize(image, (out.shape[1], out.shape[0]), dst=out, interpolation=cv2.INTER_LINEAR)
    if not _same_buffer(res, out):  # OpenCV allocated instead of writing in place (should not happen)
        out[...] = res


def resize_label_into(label: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = resize_label(label, size)`` (uint8, pixel-centre nearest), in place."""
    label = label.astype(np.uint8, copy=False)
    if label.shape == out.shape:
        out[...] = label
        return
    res = cv2.resize(label, (out.shape[1], out.shape[0]), dst=out, interpolation=LABEL_INTERPOLATION)
    if not _same_buffer(res, out):
        out[...] = res


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
