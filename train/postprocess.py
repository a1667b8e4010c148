"""Keep only the predicted regions a click points at (`train eval|predict --keep`, issue 30).

A positive click says "this object". With one click per class and slice, SAM's mask can also
light up other regions of the same class elsewhere on the slice (a second bright structure):
regions the user did not point at. On held-out sites these stray regions are part of the
over-segmentation (docs/cross_site.md), so two rules drop them:

- ``clicked-slice``: on each slice, a class keeps only its 8-connected components that contain
  one of that class's clicks on that slice;
- ``clicked-volume``: a class keeps only its 26-connected components of the whole volume that
  contain one of its clicks on any slice (a region that continues a clicked one on the next slice
  stays, even where its own slice's click fell elsewhere).

``all`` (the default, the paper's protocol) keeps every predicted pixel. The click farthest from a
tumour's border often lies in a dark core the mask leaves out, so a click can miss the mask it
produced: per slice, a missed click points at the predicted region nearest to it; over the volume,
the regions the other clicks lie in already hold that slice's mask (3D-connected), so a class's
missed clicks fall back to their nearest regions only when none of its clicks lies in any. The
rules only remove pixels. Clicks are (x, y) in pixels of the label map, rounded to the nearest
pixel.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

KEEP_MODES = ("all", "clicked-slice", "clicked-volume")

KEEP_HELP = ("all: every predicted pixel (the paper's protocol); clicked-slice: on each slice, only the "
             "connected regions of a class that hold one of its clicks; clicked-volume: only the 3D "
             "connected regions of a class that hold one of its clicks on any slice "
             "(train/postprocess.py, docs/evaluation.md)")

# {slice index: {class: clicks (n, 2) as (x, y)}}
VolumeClicks = Mapping[int, Mapping[int, np.ndarray]]


def _click_pixels(clicks: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of clicks (n, 2) xy, rounded and clipped to the map."""
    xy = np.rint(np.asarray(clicks, np.float64).reshape(-1, 2)).astype(np.int64)
    return np.clip(xy[:, 1], 0, hw[0] - 1), np.clip(xy[:, 0], 0, hw[1] - 1)


def _components_at(components: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Component labels (n,) of a slice's clicks: the one under each click, or for a click on the
    background the one of the nearest labelled pixel (Euclidean); 0 if the slice has none."""
    from scipy import ndimage

    hit = components[rows, cols]
    missed = hit == 0
    if missed.any() and components.any():
        _, (nr, nc) = ndimage.distance_transform_edt(components == 0, return_indices=True)
        hit[missed] = components[nr[rows[missed], cols[missed]], nc[rows[missed], cols[missed]]]
    return hit


def _kept(components: np.ndarray, hit: np.ndarray, n: int) -> np.ndarray:
    """Mask of the components (labels 1..n) whose labels are in `hit` (0, the background, never):
    one table lookup per voxel (np.isin sorts the whole volume)."""
    keep = np.zeros(n + 1, bool)
    keep[hit] = True
    keep[0] = False
    return keep[components]


def keep_clicked_slice(label: np.ndarray, clicks: Mapping[int, np.ndarray]) -> np.ndarray:
    """Label map (h, w) keeping, per class, the 8-connected components holding one of its clicks;
    classes without clicks are removed."""
    from scipy import ndimage  # here, not at import: the CLI reads KEEP_MODES for --help

    out = np.zeros_like(label)
    for c, pts in clicks.items():
        components, n = ndimage.label(label == c, structure=np.ones((3, 3), bool))
        if n:
            out[_kept(components, _components_at(components, *_click_pixels(pts, label.shape)), n)] = c
    return out


def keep_clicked_volume(label: np.ndarray, clicks: VolumeClicks) -> np.ndarray:
    """Label map (S, h, w) keeping, per class, the 26-connected components holding one of its
    clicks on any slice (if none does, those nearest to its clicks); classes without clicks are
    removed."""
    from scipy import ndimage

    by_class: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, per_class in clicks.items():
        for c, pts in per_class.items():
            by_class.setdefault(int(c), []).append((int(k), np.asarray(pts)))
    out = np.zeros_like(label)
    hw = label.shape[1:]
    for c, items in by_class.items():
        where = label == c
        found = ndimage.find_objects(where.view(np.uint8))  # [the class's bounding box], or [] if absent
        if not found:
            continue
        box = found[0]
        # label inside the class's bounding box only: the volume is mostly background
        components = np.zeros(label.shape, np.int32)
        components[box], n = ndimage.label(where[box], structure=np.ones((3, 3, 3), bool))
        hits = np.concatenate([components[k][_click_pixels(pts, hw)] for k, pts in items])
        if not hits.any():  # every click missed: the regions nearest to them on their slices
            hits = np.concatenate([_components_at(components[k], *_click_pixels(pts, hw)) for k, pts in items])
        out[box][_kept(components[box], hits, n)] = c
    return out


def keep_clicked(label: np.ndarray, clicks: VolumeClicks, mode: str) -> np.ndarray:
    """Apply `mode` (KEEP_MODES) to a volume's label map (S, h, w); slices without clicks keep
    nothing in the clicked modes (they had no prompt, so no prediction either)."""
    if mode == "all":
        return label
    if mode == "clicked-volume":
        return keep_clicked_volume(label, clicks)
    if mode != "clicked-slice":
        raise ValueError(f"keep mode {mode!r}: expected one of {', '.join(KEEP_MODES)}")
    out = np.zeros_like(label)
    for k, per_class in clicks.items():
        out[k] = keep_clicked_slice(label[k], per_class)
    return out
