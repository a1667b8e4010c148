"""Exemplar-guided cut-paste synthesis (paper Eq. 1-3): one pure, replayable function per sample.

API (what ``synth build`` calls per sample, and ``synth verify --replay`` per record)::

    from synth.synthesis.bank import SliceBank, SliceRef
    from synth.synthesis.config import load_config
    bank = SliceBank(exemplars={SliceRef(vol, k): (image, label), ...},   # float32 HxW [0,1], uint8 HxW
                     backgrounds={SliceRef(vol, k): image, ...},
                     class_names=("background", "tumour"))
    config = load_config()                 # synth/configs/synthesis.json, or load_config(user_file)
    image, label, record = synthesize(index, seed, bank, config, task)   # task: "single" | "multi"
    image2, label2 = replay(json.loads(json.dumps(record)), bank, config)  # bit-identical

A sample depends only on (seed, index, bank contents and order, config, task): its random stream is
``np.random.default_rng([seed, index])``, so worker count and call order do not matter.

Single target (tumour):  Is = T(Ie) where T(Ye) > 0, else T'(Ib);  Ys = T(Ye).
Multi-organ: a base exemplar is drawn; every organ k present in it (optionally taken from another
exemplar containing k, see ``mix_prob``) is transformed about its own centroid with its own T_k and
pasted, largest first (later = smaller organs overwrite), onto one T'(Ib).
The record (JSON) holds the background ref and its parameters, and per pasted object its exemplar
ref, class, centre and every sampled parameter; :func:`replay` renders from those recorded values
only. See docs/synthesis.md for the rules (placement, clamping, shapes, overlap). The bank lives
in :mod:`synth.synthesis.bank`, the config and recipes in :mod:`synth.synthesis.config`, the
anatomy rule in :mod:`synth.synthesis.background_choice`, :mod:`synth.synthesis.placement` and
:mod:`synth.synthesis.pixel_checks`, the transforms in :mod:`synth.synthesis.transforms`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from shared.errors import DataError
from synth.synthesis.background_choice import anatomy_index, choose_background
from synth.synthesis.pixel_checks import floating_objects
from synth.synthesis.placement import clamp_shift, drawn_tests, search_placement, shift_bounds
from synth.synthesis.bank import SliceBank, SliceRef
from synth.synthesis.config import Placement, SynthesisConfig, TaskConfig
from synth.synthesis.transforms import (
    TransformParams,
    apply_photometric,
    blur_pad,
    apply_blur,
    apply_intensity,
    forward_affine,
    sample_params,
    warp_image,
    warp_image_window,
    warp_label,
)

RECORD_VERSION = 1
_KERNEL3 = np.ones((3, 3), np.uint8)
# How a sample was placed, mildest first (the record's placement.fallback is the strongest used).
_STEP_ORDER = ("drawn", "moved", "redrawn", "shrunk", "background", "pair")


def synthesize(index: int, seed: int, bank: SliceBank, config: SynthesisConfig,
               task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``index`` of the dataset with ``seed``: image float32 HxW in [0, 1], label uint8 HxW,
    and its JSON-able record. Depends only on its arguments (not on call order or worker count)."""
    return synthesize_with(index, seed, bank, config, task, render_background, paste_record)


def synthesize_with(index: int, seed: int, bank: SliceBank, config: SynthesisConfig, task: str,
                    render: Callable, paste: Callable) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`synthesize` with its two rendering steps passed in (``render`` for
    :func:`render_background`, ``paste`` for :func:`paste_record`): bench/naive_synthesis.py passes
    scipy.ndimage versions to time a straightforward implementation of the same draws."""
    tc = config.task(task)
    pl = tc.placement
    seed, index = int(seed), int(index)
    rng = np.random.default_rng([seed, index])
    usable = bank.exemplars_with(None, pl.min_object_pixels)
    if not usable:
        raise DataError(f"no exemplar slice has an object of >= {pl.min_object_pixels} pixels to paste")
    found = _search(rng, bank, tc, task, usable, render)
    if found is None:
        raise DataError(f"sample {index} (seed {seed}): no placement meets the anatomy rule (>= {pl.min_inside:g} "
                        f"of the object on body, >= {pl.min_ring_content:g} of its ring on tissue) after "
                        f"{pl.max_pairs} exemplar/background pairs; check the background pool or lower "
                        f"placement.min_inside / min_ring_content")
    bg, objects = found.background, found.objects
    # Overlap rule: larger objects first, so smaller organs (pasted later) stay visible.
    objects.sort(key=lambda o: (-o["pixels"], o.get("class") or 0))
    image = bg.image
    label = np.zeros(bg.shape, dtype=np.uint8)
    for obj in objects:
        paste(image, label, obj, bank, pl.feather)
    fallback = ("pair" if found.pair else "background" if found.bg_try else
                max((o["placed"] for o in objects), key=_STEP_ORDER.index))
    record = {"version": RECORD_VERSION, "task": task, "seed": [seed, index], "shape": [int(bg.shape[0]), int(bg.shape[1])],
              "exemplar": found.base.to_json(),
              "background": {"ref": bg.ref.to_json(), "center": [bg.center[0], bg.center[1]],
                             "params": bg.params.to_dict(), "match": bg.match, **bg.choice},
              "objects": objects,
              "placement": {"fallback": fallback, "pairs": found.pair + 1, "backgrounds": found.backgrounds_tried,
                            "tries": sum(o["tries"] for o in objects)}}
    # the pixel-level check of the result (docs/synthesis.md, "Floating objects")
    n_float, ring_air = floating_objects(image, label, task, sorted({o["class"] for o in objects if o.get("class")}))
    record["check"] = {"floating": n_float, "ring_air": round(ring_air, 4)}
    return image, label, record


@dataclass
class _Background:
    """T'(Ib) of one try: the slice, its drawn (and clamped) parameters and the rendered frame."""

    ref: SliceRef
    match: Any
    choice: dict
    params: TransformParams
    center: tuple[float, float]
    image: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape


@dataclass
class _Found:
    """The (exemplar, background) pair that took every object, and how many tries it needed."""

    base: SliceRef
    background: _Background
    objects: list[dict]
    pair: int  # 0-based number of the (exemplar, background) pair
    bg_try: int  # 0-based number of the background tried for this exemplar
    backgrounds_tried: int  # in all


def _search(rng: np.random.Generator, bank: SliceBank, tc: TaskConfig, task: str, usable: list[SliceRef],
            render: Callable) -> _Found | None:
    """Draw (exemplar, background, parameters) until every object is placed by the anatomy rule
    (synth/synthesis/placement.py: an object is pasted only where it lies on the background's content).
    Fallbacks, in order: moved towards the content, redrawn positions, smaller scales
    (search_placement); another background; a new (exemplar, background) pair. None when
    ``max_pairs`` pairs fail. The draw order is fixed: it decides every sample's bytes."""
    pl = tc.placement
    scale_low = tc.object.scale[0]
    backgrounds_tried = 0
    for pair in range(pl.max_pairs):
        # 1. Exemplar (the base: the tumour's slice, or the slice whose organs are pasted).
        base = usable[int(rng.integers(len(usable)))]
        wanted = _wanted_objects(rng, bank, base, task, pl)
        for bg_try in range(pl.max_backgrounds):
            backgrounds_tried += 1
            bg = _draw_background(rng, bank, base, tc, scale_low, render)
            objects = _place_objects(rng, bank, tc, wanted, bg.image, scale_low)
            if objects is not None:
                return _Found(base, bg, objects, pair, bg_try, backgrounds_tried)
    return None


def _wanted_objects(rng: np.random.Generator, bank: SliceBank, base: SliceRef, task: str,
                    pl: Placement) -> list[tuple[int | None, SliceRef]]:
    """(class, exemplar) of each object to paste: the whole foreground of ``base`` (single), or
    each organ of ``base``, taken from another exemplar with probability ``mix_prob`` (multi)."""
    if task == "single":
        return [(None, base)]
    wanted = []
    counts = bank.class_counts(base)
    for k in range(1, len(bank.class_names)):
        if counts[k] < pl.min_object_pixels:
            continue
        u = float(rng.random())
        others = bank.exemplars_with(k, pl.min_object_pixels)
        j = int(rng.integers(len(others)))
        wanted.append((k, others[j] if u < pl.mix_prob else base))
    return wanted


def _draw_background(rng: np.random.Generator, bank: SliceBank, base: SliceRef, tc: TaskConfig, scale_low: float,
                     render: Callable) -> _Background:
    """2. Background: random from the pool (paper), or one that can hold the object ("fit");
    T' drawn, its translation clamped to keep the content in frame, rendered."""
    pl = tc.placement
    ref, match, choice = choose_background(rng, bank, base, pl, scale_low)
    src = bank.background(ref)
    shape = src.shape
    params = sample_params(rng, tc.background, shape)
    center = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    params = _clamp_background(params, center, shape, bank.content_bbox(ref, pl.content_threshold),
                               tc.background.max_shift)
    image = render(src, params, center, bank.content_bbox(ref, 0.0))
    return _Background(ref, match, choice, params, center, image)


def _place_objects(rng: np.random.Generator, bank: SliceBank, tc: TaskConfig, wanted: list[tuple[int | None, SliceRef]],
                   image: np.ndarray, scale_low: float) -> list[dict] | None:
    """3. Objects: draw all parameters first (fixed draw order), then place each; their records,
    or None as soon as one finds no placement on this background."""
    pl = tc.placement
    shape = image.shape
    drawn = []
    for cls, ref in wanted:
        params = sample_params(rng, tc.object, shape)
        extra = rng.uniform(-1.0, 1.0, size=(pl.max_tries - 1, 2))
        drawn.append((cls, ref, params, extra))
    objects = []
    ctx: dict = {}  # the background's padded frame and content centre, for all its objects
    index = anatomy_index(bank)
    geometry = [(bank.object_info(ref, cls), index.ring(ref, cls), params, bank.exemplar(ref)[0].shape)
                for cls, ref, params, _ in drawn]
    firsts = drawn_tests(geometry, image, pl, tc.object.max_shift, ctx)  # every drawn position, one lookup
    for (cls, ref, params, extra), (info, ring, _, src_shape), first in zip(drawn, geometry, firsts):
        placed = search_placement(info, ring, params, extra, src_shape, image, pl, scale_low,
                                  tc.object.max_shift, ctx, drawn=first)
        if placed is None:
            return None
        classes = ([int(c) for c in np.flatnonzero(bank.class_counts(ref)[1:]) + 1] if cls is None else [cls])
        obj = {"ref": ref.to_json(), "classes": classes, "pixels": info.count,
               "center": [info.center[0], info.center[1]], "src_shape": [int(src_shape[0]), int(src_shape[1])],
               "params": placed.params.to_dict(), "inside": placed.inside, "ring": placed.ring,
               "placed": placed.step, "tries": placed.tries}
        if cls is not None:  # multi: the one organ cut out; single: every foreground class of the slice
            obj["class"] = cls
        objects.append(obj)
    return objects


def replay(record: dict, bank: SliceBank, config: SynthesisConfig) -> tuple[np.ndarray, np.ndarray]:
    """Render a sample from its recorded parameters (no re-sampling); bit-identical to :func:`synthesize`."""
    try:
        if record.get("version") != RECORD_VERSION:
            raise DataError(f"sample record version {record.get('version')!r} is not supported (expected {RECORD_VERSION})")
        tc = config.task(record["task"])
        bg = record["background"]
        bg_src = bank.background(SliceRef.from_json(bg["ref"]))
        if list(bg_src.shape) != list(record["shape"]):
            raise DataError(f"background {bg['ref']} has shape {bg_src.shape}, the record says {record['shape']}")
        bg_ref = SliceRef.from_json(bg["ref"])
        image = render_background(bg_src, TransformParams.from_dict(bg["params"]),
                                   (float(bg["center"][0]), float(bg["center"][1])), bank.content_bbox(bg_ref, 0.0))
        label = np.zeros(bg_src.shape, dtype=np.uint8)
        for obj in record["objects"]:
            paste_record(image, label, obj, bank, tc.placement.feather)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"sample record {record.get('seed')!r} is malformed ({type(exc).__name__}: {exc})") from None
    return image, label


# ---------------------------------------------------------------------------------------------

def _clamp_background(params: TransformParams, center: tuple[float, float], shape: tuple[int, int],
                      content: tuple[int, int, int, int] | None, max_shift: float) -> TransformParams:
    """Keep the background's content (e.g. the head) inside the frame by clamping the translation."""
    if content is None:
        return params
    fwd = forward_affine(params, center, shape, shape, with_translation=False)
    lx, hx, ly, hy = shift_bounds(fwd.bbox(content), shape, max_shift)
    return params.replace(tx=clamp_shift(params.tx, lx, hx), ty=clamp_shift(params.ty, ly, hy))


def render_background(src: np.ndarray, params: TransformParams, center: tuple[float, float],
                       nonzero: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """T'(background). ``nonzero`` (y0, y1, x0, x1: the source's nonzero box) lets warp, blur and
    intensity run on the window the content lands in only: outside it the warped, blurred image is
    exactly 0, so the frame there is ``clip(gain * 0 ** gamma + shift) = clip(shift)``. The window
    reaches past the content by the linear interpolation (half a source pixel, times the scale) and
    the blur, so the blur's reflected border inside the window only ever sees those zeros; the warp
    gives each pixel the value the whole-frame warp gives it (``warp_image_window``). So the result
    is the same bytes as with ``nonzero=None`` (the whole frame is the window)."""
    h, w = src.shape
    fwd = forward_affine(params, center, src.shape, src.shape)
    if nonzero is None:
        wx0, wy0, wx1, wy1 = 0, 0, w - 1, h - 1
    else:
        x0, y0, x1, y1 = fwd.bbox(nonzero)
        pad = 2 + int(math.ceil(params.scale)) + blur_pad(params.blur_sigma)
        wx0, wy0 = max(int(math.floor(x0)) - pad, 0), max(int(math.floor(y0)) - pad, 0)
        wx1, wy1 = min(int(math.ceil(x1)) + pad, w - 1), min(int(math.ceil(y1)) + pad, h - 1)
    outside = min(max(params.shift, 0.0), 1.0)  # what a black pixel becomes
    img = np.full((h, w), outside, dtype=np.float32) if outside else np.zeros((h, w), dtype=np.float32)
    if wx0 <= wx1 and wy0 <= wy1:
        win = warp_image_window(src, fwd.inverse_matrix(), (wx0, wy0), (wx1 - wx0 + 1, wy1 - wy0 + 1))
        img[wy0:wy1 + 1, wx0:wx1 + 1] = apply_intensity(apply_blur(win, params.blur_sigma), params.gain,
                                                          params.gamma, params.shift)
    return img


def paste_record(image: np.ndarray, label: np.ndarray, obj: dict, bank: SliceBank, feather: bool) -> None:
    """Paste one recorded object (an entry of a record's ``objects``) into ``image`` / ``label``."""
    ref = SliceRef.from_json(obj["ref"])
    src_img, src_lab = bank.exemplar(ref)
    if list(src_img.shape) != list(obj["src_shape"]):
        raise DataError(f"exemplar {ref} has shape {src_img.shape}, the record says {obj['src_shape']}")
    cls = obj.get("class")  # absent (or null in records before 2026-11-26): the whole foreground
    cls = None if cls is None else int(cls)
    info = bank.object_info(ref, cls)
    _paste(image, label, src_img, src_lab, info.bbox, cls,
           TransformParams.from_dict(obj["params"]), (float(obj["center"][0]), float(obj["center"][1])), feather,
           crop=info.crop)


def _paste(image: np.ndarray, label: np.ndarray, src_img: np.ndarray, src_lab: np.ndarray,
           bbox: tuple[int, int, int, int], cls: int | None, params: TransformParams,
           center: tuple[float, float], feather: bool, crop: np.ndarray | None = None) -> None:
    """Warp one object into a window around its destination and paste it where its label lands.
    ``crop``: the object's label inside ``bbox`` as :meth:`SliceBank.object_info` caches it (else
    cut here)."""
    h, w = image.shape
    fwd = forward_affine(params, center, src_img.shape, image.shape)
    x0, y0, x1, y1 = fwd.bbox(bbox)
    pad = blur_pad(params.blur_sigma) + 2
    wx0, wy0 = max(int(math.floor(x0)) - pad, 0), max(int(math.floor(y0)) - pad, 0)
    wx1, wy1 = min(int(math.ceil(x1)) + pad, w - 1), min(int(math.ceil(y1)) + pad, h - 1)
    if wx0 > wx1 or wy0 > wy1:
        return  # entirely outside the frame
    size = (wx1 - wx0 + 1, wy1 - wy0 + 1)
    by0, by1, bx0, bx1 = bbox
    if crop is None:
        crop = src_lab[by0:by1 + 1, bx0:bx1 + 1]
        if cls is not None:
            crop = (crop == cls).astype(np.uint8) * np.uint8(cls)
        crop = np.ascontiguousarray(crop)
    lab = warp_label(crop, fwd.inverse_matrix((wx0, wy0), (bx0, by0)), size)
    if not cv2.countNonZero(lab):
        return
    mask = lab > 0
    obj = apply_photometric(warp_image(src_img, fwd.inverse_matrix((wx0, wy0)), size), params)
    win = image[wy0:wy1 + 1, wx0:wx1 + 1]
    if feather:
        # the object inside the mask, the 50/50 mean on the 1-pixel ring around it: one masked copy
        # over the dilated mask instead of four boolean-indexed gathers/scatters
        near = cv2.dilate(mask.view(np.uint8), _KERNEL3).view(bool)
        blend = win + obj
        blend *= np.float32(0.5)
        np.copyto(blend, obj, where=mask)
        np.copyto(win, blend, where=near)
    else:
        np.copyto(win, obj, where=mask)
    np.copyto(label[wy0:wy1 + 1, wx0:wx1 + 1], lab, where=mask)
