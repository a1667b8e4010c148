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
