"""PNG overlays of the worst slices: ground truth and prediction over the image, per class.

Every class has one colour (``CLASS_BGR``): its ground truth is drawn as an outline in that
colour and its prediction as a translucent fill of the same colour, so organs can be told apart
and a missed region (outline without fill) or a false one (fill without outline) shows at a
glance. Prompt points are small hollow crosses drawn under the outlines (a small ground truth
stays visible); box prompts are thin rectangles in the same yellow. The legend shows these marks (outline, fill, cross) and then each class present
as it appears on the slice: its fill over grey tissue inside its outline.

Slices are shown in the radiological convention when the volume's affine is known: patient's
anterior at the top (the spine at the bottom of an axial CT), patient's right on the image's
left; letters on the edges say so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shared.orientation import display_orientation, orient

POINT_BGR = (0, 230, 255)  # prompt points: yellow
# Colours of classes 1..K (BGR), cycled; distinct hues that stay visible on grey scans.
# None of them is the prompt points' yellow (Synapse order: spleen orange, right kidney blue,
# left kidney purple, gallbladder green, liver pink, stomach brown, aorta cyan, pancreas red).
CLASS_BGR = [(0, 140, 255), (255, 160, 0), (255, 0, 200), (0, 220, 120), (180, 120, 255),
             (30, 90, 170), (255, 255, 0), (90, 90, 255), (128, 255, 0), (255, 96, 96)]
FILL_ALPHA = 0.4
NEUTRAL_BGR = (235, 235, 235)  # the generic "outline" / "fill" legend marks
TISSUE_BGR = (140, 140, 140)   # what a legend fill swatch is blended over (mid-grey tissue)
MIN_SIDE = 384  # small slices are enlarged so contours and text stay readable


def class_colour(c: int) -> tuple[int, int, int]:
    return CLASS_BGR[(int(c) - 1) % len(CLASS_BGR)]


def render_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, title: str,
                   class_names: Sequence[str], points: Sequence[tuple] = (),
                   affine: np.ndarray | None = None, boxes: Sequence[tuple] = ()) -> np.ndarray:
    """BGR uint8 picture of one slice: prediction fills, ground-truth outlines, prompt points
    and boxes, a title bar and a legend. `points`: (class, x, y) prompt points at the slice's
    resolution; `boxes`: (class, x0, y0, x1, y1) box prompts; `affine`: the volume's (for the
    radiological orientation)."""
    import cv2

    how = display_orientation(affine)
    corners = [p for c, x0, y0, x1, y1 in boxes for p in ((c, x0, y0), (c, x1, y1))]
    (image, label, pred), marks = orient([image, label, pred], list(points) + corners, how)
    points, corners = marks[:len(points)], marks[len(points):]
    h, w = image.shape
    scale = max(1, int(np.ceil(MIN_SIDE / max(1, min(h, w)))))
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    gray = cv2.resize(gray, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(label, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    prd = cv2.resize(pred, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    tint = canvas.copy()
    for c in np.unique(prd[prd > 0]):
        tint[prd == c] = class_colour(c)
    canvas = cv2.addWeighted(tint, FILL_ALPHA, canvas, 1 - FILL_ALPHA, 0)
    thickness = max(1, scale // 2 + 1)

    # Prompt points first, so the outlines drawn next stay on top of them; hollow centre.
    arm_out, arm_in = 3 * scale + 3, scale + 1
    for _, x, y in points:
        cx, cy = int(round((x + 0.5) * scale)), int(round((y + 0.5) * scale))
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            cv2.line(canvas, (cx + dx * arm_in, cy + dy * arm_in), (cx + dx * arm_out, cy + dy * arm_out),
                     POINT_BGR, max(1, thickness - 1), cv2.LINE_AA)
    for (_, xa, ya), (_, xb, yb) in zip(corners[0::2], corners[1::2]):
        x0, x1 = sorted((xa, xb))
        y0, y1 = sorted((ya, yb))
        cv2.rectangle(canvas, (int(round(x0 * scale)), int(round(y0 * scale))),
                      (int(round((x1 + 1) * scale)) - 1, int(round((y1 + 1) * scale)) - 1),
                      POINT_BGR, max(1, thickness - 1), cv2.LINE_AA)
    for c in np.unique(lab[lab > 0]):
        contours, _ = cv2.findContours((lab == c).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, class_colour(c), thickness)

    font = cv2.FONT_HERSHEY_SIMPLEX
    if how is not None:  # orientation letters: radiological view
        H, W = canvas.shape[:2]
        for text, (x, y) in (("A", (W // 2 - 5, 16)), ("P", (W // 2 - 5, H - 6)),
                             ("R", (4, H // 2 + 5)), ("L", (W - 14, H // 2 + 5))):
            cv2.putText(canvas, text, (x, y), font, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(canvas, text, (x, y), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)

    classes_here = sorted({int(c) for c in np.unique(np.concatenate([label.ravel(), pred.ravel()])) if c > 0})
    # Legend: the two marks in a neutral colour, then each class as it appears on the slice
    # (its fill over grey tissue, with its outline), so legend and picture match.
    legend: list[tuple[str, str, tuple[int, int, int]]] = [
        ("ground truth: outline", "outline", NEUTRAL_BGR), ("prediction: fill", "fill", NEUTRAL_BGR)]
    if len(points):
        legend.append(("prompt point", "cross", POINT_BGR))
    if len(corners):
        legend.append(("prompt box", "outline", POINT_BGR))
    legend += [(class_names[c] if c < len(class_names) else str(c), "class", class_colour(c)) for c in classes_here]
    # Flow layout by measured text width, so a long entry never runs into the next mark.
    positions: list[tuple[int, int]] = []
    x, row = 6, 0
    for name, _, _ in legend:
        width = 20 + cv2.getTextSize(name, font, 0.45, 1)[0][0] + 14
        if x > 6 and x + width > canvas.shape[1]:
            x, row = 6, row + 1
        positions.append((x, 26 + 20 * row))
        x += width
    bar_h = 26 + 20 * (row + 1)
    top = np.full((bar_h, canvas.shape[1], 3), 32, np.uint8)
    cv2.putText(top, title, (6, 18), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for (name, mark, colour), (x, y) in zip(legend, positions):
        box = ((x, y + 3), (x + 14, y + 15))
        if mark in ("fill", "class"):
            patch = top[y + 3:y + 16, x:x + 15]
            patch[:] = (np.asarray(colour) * FILL_ALPHA + np.asarray(TISSUE_BGR) * (1 - FILL_ALPHA)).astype(np.uint8)
        if mark in ("outline", "class"):
            cv2.rectangle(top, *box, colour, 2)
        elif mark == "cross":
            cv2.line(top, (x, y + 9), (x + 4, y + 9), colour, 2)
            cv2.line(top, (x + 10, y + 9), (x + 14, y + 9), colour, 2)
            cv2.line(top, (x + 7, y + 2), (x + 7, y + 6), colour, 2)
            cv2.line(top, (x + 7, y + 12), (x + 7, y + 16), colour, 2)
        cv2.putText(top, name, (x + 20, y + 14), font, 0.45, (230, 230, 230), 1, cv2.LINE_AA)
    return np.concatenate([top, canvas], axis=0)


def write_overlays(directory: Path, items: Sequence[dict], class_names: Sequence[str]) -> list[Path]:
    """One PNG per item (dicts with volume, slice, dice, image, label, pred, optional points and
    affine), worst first."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, it in enumerate(items, 1):
        gt_px = int(np.count_nonzero(it["label"]))
        title = f"#{rank} {it['volume']} slice {it['slice']}  Dice {100 * it['dice']:.1f}%  GT {gt_px} px"
        picture = render_overlay(it["image"], it["label"], it["pred"], title, class_names,
                                 it.get("points", ()), it.get("affine"), it.get("boxes", ()))
        path = directory / f"{rank:02d}_{it['volume']}_slice{it['slice']:03d}.png"
        if not cv2.imwrite(str(path), picture):
            raise OSError(f"{path}: cannot write PNG")
        paths.append(path)
    return paths
