"""Pictures for auditing synthesized data: label overlays, titled panels, parameter text, contact sheets.

Pure numpy/OpenCV drawing on arrays (BGR uint8 canvases, written with ``cv2.imwrite``); the
``synth show`` / ``synth sheet`` commands (synth/commands/visual_cmd.py) feed them a dataset.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# BGR, one per class index (index 0 = background is never drawn); tab10-like, cycled beyond 10.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (40, 39, 214), (44, 160, 44), (180, 119, 31), (14, 127, 255), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (34, 189, 188), (207, 190, 23), (127, 127, 127),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLE_H = 22
BG_COLOUR = (32, 32, 32)
TEXT_COLOUR = (235, 235, 235)


def class_colour(k: int) -> tuple[int, int, int]:
    return PALETTE[1 + (k - 1) % (len(PALETTE) - 1)] if k > 0 else PALETTE[0]


def to_bgr(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] (or uint8) -> BGR uint8."""
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def _fit(image: np.ndarray, label: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so the longer side is ``size`` (images linear, labels nearest)."""
    h, w = image.shape[:2]
    f = size / max(h, w)
    if abs(f - 1.0) < 1e-9:
        return image, label
    dsize = (max(1, round(w * f)), max(1, round(h * f)))
    image = cv2.resize(image, dsize, interpolation=cv2.INTER_LINEAR if f < 1 else cv2.INTER_NEAREST)
    if label is not None:
        label = cv2.resize(label, dsize, interpolation=cv2.INTER_NEAREST)
    return image, label


def overlay(image: np.ndarray, label: np.ndarray | None, *, size: int | None = None, alpha: float = 0.3,
            contour: bool = True) -> np.ndarray:
    """Grey image with each class filled translucently in its colour and outlined (BGR uint8)."""
    if size is not None:
        image, label = _fit(image, label, size)
    out = to_bgr(image)
    if label is None or not label.any():
        return out
    colours = np.array([class_colour(k) for k in range(int(label.max()) + 1)], dtype=np.float32)
    fg = label > 0
    blend = out.astype(np.float32)
    blend[fg] = (1 - alpha) * blend[fg] + alpha * colours[label[fg]]
    out = blend.astype(np.uint8)
    if contour:
        for k in np.unique(label[fg]):
            cnts, _ = cv2.findContours((label == k).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, cnts, -1, class_colour(int(k)), 1)
    return out


def titled(panel: np.ndarray, title: str, width: int | None = None) -> np.ndarray:
    """Put a title bar above a BGR panel (text cut to fit)."""
    w = max(panel.shape[1], width or 0)
    canvas = np.full((panel.shape[0] + TITLE_H, w, 3), BG_COLOUR, dtype=np.uint8)
    canvas[TITLE_H:, :panel.shape[1]] = panel
    _put(canvas, _cut(title, w, 0.45), (4, 15), 0.45)
    return canvas


def text_panel(lines: Sequence[str], width: int, height: int | None = None, scale: float = 0.4) -> np.ndarray:
    """Lines of text on a dark panel (each line cut to the width)."""
    step = int(round(28 * scale)) + 4
    height = height or step * len(lines) + 8
    canvas = np.full((height, width, 3), BG_COLOUR, dtype=np.uint8)
    for i, line in enumerate(lines):
        y = 4 + step * (i + 1) - 4
        if y > height - 2:
            break
        _put(canvas, _cut(line, width, scale), (4, y), scale)
    return canvas


def legend(class_names: Sequence[str], present: Sequence[int], width: int) -> np.ndarray:
    """Colour swatches with class names for the given class indices, flowing left to right."""
    items = []
    for k in (k for k in present if k > 0):
        name = class_names[k] if k < len(class_names) else str(k)
        text = _cut(f"{k} {name}", width - 22, 0.4)
        items.append((k, text, 30 + cv2.getTextSize(text, FONT, 0.4, 1)[0][0]))
    pos, x, y = [], 4, 4
    for k, text, w in items:
        if x > 4 and x + w > width:
            x, y = 4, y + 18
        pos.append((k, text, x, y))
        x += w
    canvas = np.full((y + 22, width, 3), BG_COLOUR, dtype=np.uint8)
    for k, text, x, y in pos:
        cv2.rectangle(canvas, (x, y + 2), (x + 12, y + 14), class_colour(k), -1)
        _put(canvas, text, (x + 18, y + 13), 0.4)
    return canvas


def hstack(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.vstack([p, np.full((h - p.shape[0], p.shape[1], 3), BG_COLOUR, np.uint8)])
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((h, gap, 3), BG_COLOUR, np.uint8))
    return np.hstack(out)


def vstack(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    w = max(p.shape[1] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[1] < w:
            p = np.hstack([p, np.full((p.shape[0], w - p.shape[1], 3), BG_COLOUR, np.uint8)])
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((gap, w, 3), BG_COLOUR, np.uint8))
    return np.vstack(out)


def grid(panels: Sequence[np.ndarray], cols: int, gap: int = 4) -> np.ndarray:
    rows = [hstack(panels[i:i + cols], gap) for i in range(0, len(panels), cols)]
    return vstack(rows, gap)


def params_lines(record: dict, class_names: Sequence[str]) -> list[str]:
    """Human-readable transform parameters of a sample record (synth.synthesis.sample format)."""
    def fmt(p: dict) -> str:
        flips = "".join(f for f, on in (("H", p["flip_h"]), ("V", p["flip_v"])) if on) or "-"
        return (f"s={p['scale']:.3f} rot={p['rotation']:+.1f} flip={flips} t=({p['tx']:+.1f},{p['ty']:+.1f}) "
                f"blur={p['blur_sigma']:.2f} gain={p['gain']:.3f} gamma={p['gamma']:.3f} shift={p['shift']:+.3f}")

    bg = record["background"]
    lines = [f"task {record['task']}  seed {record['seed']}  shape {record['shape'][0]}x{record['shape'][1]}",
             f"background {bg['ref']['volume']}[{bg['ref']['slice']}]",
             "  T': " + fmt(bg["params"])]
    for i, obj in enumerate(record["objects"]):
        cls = obj.get("class")
        name = "foreground" if cls is None else (class_names[cls] if cls < len(class_names) else str(cls))
        lines.append(f"#{i} {name} <- {obj['ref']['volume']}[{obj['ref']['slice']}] "
                     f"({obj['pixels']} px, centre {obj['center'][0]:.0f},{obj['center'][1]:.0f}, "
                     f"inside {obj.get('inside', float('nan')):.2f})")
        lines.append("  T: " + fmt(obj["params"]))
    return lines


def show_figure(exemplars: Sequence[tuple[str, np.ndarray, np.ndarray]], background: tuple[str, np.ndarray],
                result: tuple[str, np.ndarray, np.ndarray], record: dict, class_names: Sequence[str],
                size: int = 256) -> np.ndarray:
    """One sample's audit picture: exemplar slice(s) with labels, background, result with label, parameters."""
    row = [titled(overlay(img, lab, size=size), title) for title, img, lab in exemplars[:4]]
    if len(exemplars) > 4:
        row.append(titled(text_panel([f"+{len(exemplars) - 4} more exemplars"], size, size), "..."))
    row.append(titled(overlay(background[1], None, size=size), background[0]))
    res = titled(overlay(result[1], result[2], size=size), result[0])
    present = [int(k) for k in np.unique(result[2]) if k > 0]
    res = vstack([res, legend(class_names, present, res.shape[1])], gap=0)
    row.append(res)
    top = hstack(row)
    lines = params_lines(record, class_names)
    return vstack([top, text_panel(lines, top.shape[1], scale=0.42)])


def sheet_figure(samples: Sequence[tuple[str, np.ndarray, np.ndarray]], class_names: Sequence[str],
                 cols: int = 6, size: int = 180) -> np.ndarray:
    """A contact sheet: each sample with its label overlaid and a caption (paper Fig. 1 style)."""
    panels = [titled(overlay(img, lab, size=size), caption) for caption, img, lab in samples]
    present = sorted({int(k) for _, _, lab in samples for k in np.unique(lab) if k > 0})
    body = grid(panels, cols)
    return vstack([body, legend(class_names, present, body.shape[1])])


def _cut(text: str, width: int, scale: float) -> str:
    def fits(t: str) -> bool:
        return cv2.getTextSize(t, FONT, scale, 1)[0][0] <= width - 8

    if fits(text):
        return text
    while text and not fits(text + "~"):
        text = text[:-1]
    return text + "~"


def _put(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(canvas, text, org, FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
