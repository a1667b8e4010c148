"""Slice-by-slice propagation (`train predict --propagate`): one prompt segments a whole structure.

Each user prompt (a :class:`Seed`: class, slice k0, a box or clicks) starts two chains, as
LiteMedSAM's 3D inference does (bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``
``MedSAM_infer_npz_3D``): slice k0 is segmented from the seed's prompt, then k0 + 1, k0 + 2, ...
each from the previous slice's mask of that chain, and likewise k0 - 1, k0 - 2, ...:

- ``follow="box"`` (box models, or the user drew a box): the bounding box of the previous mask,
  each side moved out by ``margin`` pixels and clipped to the slice (MedSAM's ``get_bbox256`` with
  ``bbox_shift``);
- ``follow="point"`` (point models clicked with points): one click at the previous mask's centre
  (:func:`train.prompts.center_point`, the pixel farthest from its border).

A chain stops when its mask has fewer than ``min_pixels`` pixels (that slice's mask is kept) or the
volume ends. Unlike MedSAM's script, which knows the structure's z-range from a 3D box and falls
back to the seed box on an empty slice, a seed here is drawn on one slice, so the empty mask is the
only end there is.

Every chain is followed on its own (its next prompt comes from its own mask, whatever the other
classes predict there), so the result does not depend on the order of the prompts. The volume's
labels combine them per pixel as :func:`train.inference.predict_slices` does: per class the
maximum logit of its chains, the class with the highest logit where it is > 0 (ties: the lower
class index).

Scheduling: all upward chains advance together in one ascending sweep and then all downward chains
in one descending sweep, so a slice is decoded for every chain that reaches it after ONE encoding,
however many classes it holds. A slice the upward sweep encoded below the highest seed may be
needed again on the way down: its embedding is kept until the downward sweep has passed it (at most
``highest seed - lowest seed`` slices are held); every other embedding is released after use
(``release``). Without propagation (``propagate=False``) each seed segments only its own slice.

The model is reached through ``logits(k, prompts) -> (n, h, w)`` logits (> 0 = inside) of n prompts
on slice k; nothing here needs torch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from train.prompts import Prompt, bounding_box, center_point

FOLLOW_KINDS = ("box", "point")
DEFAULT_MARGIN = 3.0  # pixels per side (MedSAM's bbox_shift in get_bbox256)
DEFAULT_MIN_PIXELS = 1  # a chain stops at a mask smaller than this


@dataclass(frozen=True)
class Seed:
    """One user prompt: class `class_index` (1..N) on slice `slice_index`."""

    class_index: int
    slice_index: int
    prompt: Prompt
    follow: str = "box"  # how the next slice's prompt is made from this chain's mask: box | point

    def __post_init__(self) -> None:
        if self.follow not in FOLLOW_KINDS:
            raise ValueError(f"follow must be one of {FOLLOW_KINDS}, got {self.follow!r}")
        if self.class_index < 1:
            raise ValueError("class_index must be >= 1 (0 is background)")


@dataclass
class Chain:
    """What one seed segmented: the slices its chains reached, and the mask sizes there."""

    seed: Seed
    slices: dict[int, int] = field(default_factory=dict)  # slice visited -> mask pixels (logit > 0)

    @property
    def extent(self) -> tuple[int, int] | None:
        """(first, last) slice with a non-empty mask; None when the seed's own mask is empty."""
        ks = [k for k, n in self.slices.items() if n > 0]
        return (min(ks), max(ks)) if ks else None


@dataclass
class Propagation:
    labels: np.ndarray  # (S, h, w) uint8, 0 = background
    chains: list[Chain]  # one per seed, in seed order
    encoded: int  # distinct slices the model was asked about (= encoder calls with a cache)
    decoded: int  # prompts decoded


def next_prompt(mask: np.ndarray, follow: str, margin: float = DEFAULT_MARGIN) -> Prompt:
    """The prompt for the next slice from this slice's (non-empty) mask."""
    if follow == "box":
        return Prompt.around(bounding_box(mask, margin))
    return Prompt.at(center_point(mask))


class _Canvas:
    """Per-slice running (best logit, label): the highest logit wins where > 0, ties to the lower class."""

    def __init__(self, shape: tuple[int, int, int]):
        self.labels = np.zeros(shape, np.uint8)
        self._best: dict[int, np.ndarray] = {}

    def add(self, k: int, c: int, logit: np.ndarray) -> None:
        best = self._best.get(k)
        if best is None:
            best = self._best[k] = np.zeros(logit.shape, np.float32)
        lab = self.labels[k]
        win = (logit > best) | ((logit == best) & (logit > 0) & (c < lab))
        best[win] = logit[win]
        lab[win] = c


def propagate(shape: Sequence[int], seeds: Sequence[Seed],
              logits: Callable[[int, list[Prompt]], np.ndarray], *,
              release: Callable[[int], None] | None = None, propagate: bool = True,
              margin: float = DEFAULT_MARGIN, min_pixels: int = DEFAULT_MIN_PIXELS) -> Propagation:
    """Segment a volume of `shape` (S, h, w) from `seeds` (module docstring)."""
    s, h, w = (int(v) for v in shape)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for seed in seeds:
        if not 0 <= seed.slice_index < s:
            raise ValueError(f"seed on slice {seed.slice_index} outside the volume's {s} slices")
    canvas = _Canvas((s, h, w))
    chains = [Chain(seed) for seed in seeds]
    touched: set[int] = set()
    decoded = 0
    released: set[int] = set()

    def free(k: int) -> None:
        if k in touched and k not in released:
            released.add(k)
            if release is not None:
                release(k)

    if not seeds:
        return Propagation(canvas.labels, chains, 0, 0)
    lo = min(seed.slice_index for seed in seeds)
    hi = max(seed.slice_index for seed in seeds)
    seed_masks: dict[int, np.ndarray] = {}  # chain -> its mask on its seed slice (start of the way down)

    def step(k: int, todo: list[tuple[int, Prompt]]) -> dict[int, np.ndarray]:
        """Decode the chains' prompts on slice k; returns chain -> mask (logit > 0)."""
        nonlocal decoded
        out = np.asarray(logits(k, [p for _, p in todo]), np.float32)
        if out.shape != (len(todo), h, w):
            raise ValueError(f"logits for slice {k}: expected shape {(len(todo), h, w)}, got {out.shape}")
        touched.add(k)
        decoded += len(todo)
        masks = {}
        for (i, _), lg in zip(todo, out):
            canvas.add(k, chains[i].seed.class_index, lg)
            masks[i] = lg > 0
            chains[i].slices[k] = int(np.count_nonzero(masks[i]))
        return masks

    # the way up (seed slices included)
    alive: dict[int, Prompt] = {}  # chain -> its prompt for the current slice
    for k in range(lo, s):
        todo = [(i, seed.prompt) for i, seed in enumerate(seeds) if seed.slice_index == k]
        todo += sorted(alive.items())
        alive = {}
        if todo:
            masks = step(k, todo)
            for i, m in masks.items():
                if seeds[i].slice_index == k:
                    seed_masks[i] = m
                if propagate and k + 1 < s and np.count_nonzero(m) >= min_pixels:
                    alive[i] = next_prompt(m, seeds[i].follow, margin)
        if k >= hi:
            free(k)  # never needed on the way down
            if not alive:
                break
    # the way down, from each seed's own mask on its slice
    if propagate:
        alive = {}
        for k in range(hi - 1, -1, -1):
            for i, seed in enumerate(seeds):
                if seed.slice_index == k + 1 and np.count_nonzero(seed_masks[i]) >= min_pixels:
                    alive[i] = next_prompt(seed_masks[i], seed.follow, margin)
            todo = sorted(alive.items())
            alive = {}
            if todo:
                for i, m in step(k, todo).items():
                    if k > 0 and np.count_nonzero(m) >= min_pixels:
                        alive[i] = next_prompt(m, seeds[i].follow, margin)
            free(k)
            if not alive and k <= lo:
                break
    for k in range(lo, hi):  # slices the way down did not reach
        free(k)
    return Propagation(canvas.labels, chains, len(touched), decoded)


__all__ = ["DEFAULT_MARGIN", "DEFAULT_MIN_PIXELS", "FOLLOW_KINDS", "Chain", "Propagation", "Seed",
           "next_prompt", "propagate"]
