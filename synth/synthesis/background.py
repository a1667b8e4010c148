"""Background slices for synthesis: the slice image with any labelled structure erased.

The paper pastes objects onto slices without foreground. Some scans have none (a CT cropped to
the abdomen has an organ in every slice, like the Synapse sample). Selection then falls back to
the slices with the least foreground (``synth.selection.rules``), and their labelled pixels are
removed here by inpainting, so a pasted organ never sits next to an unlabelled copy of another.
For a slice without foreground, ``background_image`` returns the image unchanged, so the same
rule applies to every pool entry and replay needs no flag.
"""
from __future__ import annotations

import cv2
import numpy as np

ERASE_MARGIN_PX = 2     # also erase the blurred rim around a labelled structure
INPAINT_RADIUS_PX = 5


def background_image(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``image`` with every labelled pixel (and a small margin) inpainted (OpenCV Telea, deterministic)."""
    mask = (label > 0).astype(np.uint8)
    if not mask.any():
        return image
    if ERASE_MARGIN_PX:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ERASE_MARGIN_PX + 1,) * 2)
        mask = cv2.dilate(mask, kernel)
    # OpenCV's float Telea overshoots badly on [0, 1] data; on a 0-255 float scale it is well behaved.
    scaled = np.ascontiguousarray(image, dtype=np.float32) * np.float32(255.0)
    filled = cv2.inpaint(scaled, mask, INPAINT_RADIUS_PX, cv2.INPAINT_TELEA) / np.float32(255.0)
    # only the erased pixels change; the rest keeps its exact values
    return np.where(mask > 0, np.clip(filled, 0.0, 1.0), image).astype(np.float32, copy=False)
