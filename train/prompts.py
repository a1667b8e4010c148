"""Prompts: the :class:`Prompt` of one class on one slice (clicks or a box), training prompts and
the evaluation prompts.

Training (the paper): for each sample, a random class present in its label and a random pixel of
that class; the target is that class's binary mask. With box prompts (MedSAM's training) the
prompt is the class's bounding box, each side moved out by a random 0..jitter pixels.
Evaluation: one prompt per class, the pixel farthest from the class border (`center_point`), a
random pixel (`random_point`) or the class's bounding box widened by a margin (`bounding_box`).
Points are (x, y) = (column, row) pixel indices; a box is (x0, y0, x1, y1), the pixel indices of
its first and last column and row (SAM's and MedSAM's convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


PROMPT_KINDS = ("point", "box")
# `train fit --prompt`: point (the paper), box (MedSAM), mixed (each sample a point or a box,
# evenly), none (SAMed's promptless head).
TRAIN_PROMPTS = ("point", "box", "mixed", "none")


@dataclass(frozen=True)
class Prompt:
    """What one class gets on one slice: positive clicks (`points`, (n, 2) xy) or a `box`
    (x0, y0, x1, y1), in pixels of the slice."""

    points: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (not self.points):
            raise ValueError("a Prompt is either points or a box")

    @classmethod
    def at(cls, *xy: tuple[float, float]) -> "Prompt":
        return cls(points=tuple((float(x), float(y)) for x, y in xy))

    @classmethod
    def around(cls, box) -> "Prompt":
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(box=(x0, y0, x1, y1))

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "point"

    def points_array(self) -> np.ndarray:
        return np.asarray(self.points, np.float64).reshape(-1, 2)

    def to_json(self) -> dict:
        return {"box": list(self.box)} if self.box is not None else {"points": [list(p) for p in self.points]}


def bounding_box(mask: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty mask's pixels, each side moved out by `margin` pixels and
    clipped to the slice (MedSAM's get_bbox with bbox_shift = margin)."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("bounding_box: empty mask")
    h, w = mask.shape
    m = int(round(margin))
    return (max(0, int(cols[0]) - m), max(0, int(rows[0]) - m),
            min(w - 1, int(cols[-1]) + m), min(h - 1, int(rows[-1]) + m))


def jittered_box(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The mask's bounding box with each side moved out by its own random 0..jitter pixels
    (MedSAM's training: ``random.randint(0, bbox_shift)`` per side), clipped to the slice."""
    x0, y0, x1, y1 = bounding_box(mask)
    d = rng.integers(0, int(jitter) + 1, size=4) if jitter > 0 else np.zeros(4, np.int64)
    h, w = np.shape(mask)
    return (max(0, x0 - int(d[0])), max(0, y0 - int(d[1])), min(w - 1, x1 + int(d[2])), min(h - 1, y1 + int(d[3])))


def present_classes(label: np.ndarray) -> np.ndarray:
    """Sorted foreground class indices (> 0) present in `label` (non-negative integers)."""
    label = np.asarray(label)
    top = int(label.max()) if label.size else 0
    if top <= 32:   # few classes: `label == c` tests are ~10x faster than a bincount
        return np.array([c for c in range(1, top + 1) if (label == c).any()], dtype=np.int64)
    counts = np.bincount(label.ravel(), minlength=1)
    return np.flatnonzero(counts[1:]) + 1


def random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly random (x, y) pixel of a non-empty boolean mask."""
    flat = np.flatnonzero(np.asarray(mask).ravel())
    if flat.size == 0:
        raise ValueError("random_point: empty mask")
    idx = int(flat[rng.integers(flat.size)])
    w = mask.shape[1]
    return idx % w, idx // w


def center_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the class border (Euclidean distance transform).

    The mask is zero-padded by one pixel first, so the image edge counts as border. Ties go to
    the first pixel in row-major order (np.argmax), so the result is deterministic.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("center_point: empty mask")
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    idx = int(np.argmax(dist))
    return idx % mask.shape[1], idx // mask.shape[1]


def sample_training_prompt(label: np.ndarray, rng: np.random.Generator
                           ) -> tuple[int, tuple[int, int], np.ndarray] | None:
    """(class index, (x, y), target mask uint8) for a random present class; None if no foreground."""
    label = np.asarray(label)
    classes = present_classes(label)
    if classes.size == 0:
        return None
    cls = int(classes[rng.integers(classes.size)])
    mask = label == cls
    return cls, random_point(mask, rng), mask.view(np.uint8)  # a view: no copy per sample


def sample_training_prompts(labels: torch.Tensor, num_classes: int,
                            generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched, on the labels' device: labels (B, H, W) integer with values in [0, num_classes].

    Returns (classes (B,) long, points (B, 1, 2) float xy, point_labels (B, 1) long = 1,
    targets (B, H, W) float {0, 1}). A sample without foreground gets class 0, a random pixel
    and an all-zero target (callers may drop it: ``classes > 0``).
    Uniform choices by argmax over random scores restricted to the allowed set.
    """
    b, h, w = labels.shape
    labels = labels.long()
    device = labels.device
    flat = labels.reshape(b, -1)
    present = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=device)
    present.scatter_(1, flat, True)
    present[:, 0] = False
    scores = torch.rand(b, num_classes + 1, generator=generator, device=device)
    scores = torch.where(present, scores, torch.full_like(scores, -1.0))
    classes = scores.argmax(1)
    classes = torch.where(present.any(1), classes, torch.zeros_like(classes))
    target = flat == classes[:, None]
    pix = torch.rand(b, h * w, generator=generator, device=device)
    pix = torch.where(target | (classes[:, None] == 0), pix, torch.full_like(pix, -1.0))
    idx = pix.argmax(1)
    points = torch.stack([idx % w, idx // w], dim=1).float()[:, None, :]
    targets = (target & (classes[:, None] > 0)).reshape(b, h, w).float()
    point_labels = torch.ones(b, 1, dtype=torch.long, device=device)
    return classes, points, point_labels, targets
