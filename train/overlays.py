"""PNG overlays of the worst slices: ground truth and prediction contours over the image.

Ground truth is drawn in green, the prediction in red (one colour each, all classes; class
regions of the prediction are also tinted with a per-class colour so organs can be told apart),
and the prompt points as yellow crosses.
A title bar names the volume, the slice and its Dice; a legend names the colours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

GT_BGR = (60, 220, 60)
PRED_BGR = (40, 40, 240)
POINT_BGR = (0, 230, 255)  # prompt points: yellow crosses
# Tints for predicted classes 1..K (BGR), cycled.
CLASS_BGR = [(255, 140, 0), (0, 200, 255), (255, 0, 200), (0, 255, 160), (180, 120, 255),
             (0, 128, 255), (255, 255, 0), (160, 160, 255), (128, 255, 0), (255, 96, 96)]
MIN_SIDE = 384  # small slices are enlarged so contours and text stay readable


def render_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, title: str,
                   class_names: Sequence[str], points: Sequence[tuple] = ()) -> np.ndarray:
    """BGR uint8 picture of one slice with contours, prompt points, a title bar and a legend.

    `points`: (class, x, y) prompt points at the slice's resolution.
    """
    import cv2

    h, w = image.shape
    scale = max(1, int(np.ceil(MIN_SIDE / max(1, min(h, w)))))
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    gray = cv2.resize(gray, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(label, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    prd = cv2.resize(pred, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    tint = canvas.copy()
    for c in np.unique(prd[prd > 0]):
        tint[prd == c] = CLASS_BGR[(int(c) - 1) % len(CLASS_BGR)]
    canvas = cv2.addWeighted(tint, 0.3, canvas, 0.7, 0)
    thickness = max(1, scale // 2 + 1)
    for mask, colour in ((lab, GT_BGR), (prd, PRED_BGR)):
        for c in np.unique(mask[mask > 0]):
            contours, _ = cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, colour, thickness)

    for _, x, y in points:
        centre = (int(round((x + 0.5) * scale)), int(round((y + 0.5) * scale)))
        cv2.drawMarker(canvas, centre, POINT_BGR, cv2.MARKER_CROSS, 6 * scale + 4, thickness + 1)

    font, fs = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    classes_here = sorted({int(c) for c in np.unique(np.concatenate([label.ravel(), pred.ravel()])) if c > 0})
    legend = [("ground truth", GT_BGR), ("prediction", PRED_BGR)]
    if len(points):
        legend.append(("prompt point", POINT_BGR))
    legend += [(class_names[c] if c < len(class_names) else str(c), CLASS_BGR[(c - 1) % len(CLASS_BGR)])
               for c in classes_here]
    bar_h = 26 + 20 * ((len(legend) + 2) // 3)
    top = np.full((bar_h, canvas.shape[1], 3), 32, np.uint8)
    cv2.putText(top, title, (6, 18), font, fs, (255, 255, 255), 1, cv2.LINE_AA)
    col_w = max(1, canvas.shape[1] // 3)
    for i, (name, colour) in enumerate(legend):
        x, y = 6 + (i % 3) * col_w, 26 + 20 * (i // 3)
        cv2.rectangle(top, (x, y + 3), (x + 14, y + 15), colour, -1)
        cv2.putText(top, name, (x + 20, y + 14), font, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([top, canvas], axis=0)


def write_overlays(directory: Path, items: Sequence[dict], class_names: Sequence[str]) -> list[Path]:
    """One PNG per item (dicts with volume, slice, dice, image, label, pred), worst first."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, it in enumerate(items, 1):
        title = f"#{rank} {it['volume']} slice {it['slice']}  Dice {100 * it['dice']:.1f}%"
        picture = render_overlay(it["image"], it["label"], it["pred"], title, class_names,
                                 it.get("points", ()))
        path = directory / f"{rank:02d}_{it['volume']}_slice{it['slice']:03d}.png"
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"{path}: cannot write PNG")
        paths.append(path)
    return paths
