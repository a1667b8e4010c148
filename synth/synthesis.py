"""Exemplar-guided cut-paste synthesis (paper Eq. 1-3): one pure, replayable function per sample.

API (what ``synth build`` calls per sample, and ``synth verify --replay`` per record)::

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
only. See docs/synthesis.md for the rules (placement, clamping, shapes, overlap).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from shared.errors import ConfigError, DataError
from synth.anatomy import anatomy_index, choose_background, floating_objects, search_placement, shift_bounds
from synth.transforms import (
    TransformParams,
    TransformRanges,
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
TASKS = ("single", "multi")
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "synthesis.json"
# Named recipes (``synth build --recipe``): overrides applied to synthesis.json (= "extended").
RECIPES = ("extended", "paper")
DEFAULT_RECIPE = "extended"
RECIPE_PATHS = {"paper": Path(__file__).resolve().parent / "configs" / "recipe_paper.json"}
BACKGROUND_CHOICES = ("fit", "random")
_KERNEL3 = np.ones((3, 3), np.uint8)
_MAX_POINTS = 256  # object pixels sampled for the "inside the background's body" check
# How a sample was placed, mildest first (the record's placement.fallback is the strongest used).
_STEP_ORDER = ("drawn", "moved", "redrawn", "shrunk", "background", "pair")


# =============================================================================================
# Slice references and the in-memory bank
# =============================================================================================

@dataclass(frozen=True)
class SliceRef:
    """One 2D slice of a source volume: ``{"volume": id, "slice": k}`` in JSON."""

    volume: str
    slice: int

    def to_json(self) -> dict:
        return {"volume": self.volume, "slice": int(self.slice)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SliceRef":
        try:
            return cls(str(d["volume"]), int(d["slice"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad slice reference {d!r}: expected {{'volume': str, 'slice': int}}") from exc

    def __str__(self) -> str:
        return f"{self.volume}[{self.slice}]"


@dataclass(frozen=True)
class ObjectInfo:
    """Where an object (one class, or all foreground) sits in its exemplar slice."""

    count: int  # pixels
    bbox: tuple[int, int, int, int]  # y0, y1, x0, x1 inclusive
    center: tuple[float, float]  # centroid (x, y), pixels
    points: np.ndarray  # (N, 2) float64 (x, y), a deterministic subsample of its pixels
    crop: np.ndarray | None = None  # uint8 label inside bbox, C-contiguous (only class ``cls`` kept, as ``cls``)


class SliceBank:
    """Exemplar slices (image + label) and background slices (image) held in memory.

    ``exemplar_refs`` / ``background_refs`` keep the order given (the exemplar list's order); random
    draws index into these lists, so the same bank contents in the same order give the same samples.
    """

    def __init__(self, exemplars: Mapping[SliceRef, tuple[np.ndarray, np.ndarray]],
                 backgrounds: Mapping[SliceRef, np.ndarray], class_names: tuple[str, ...]):
        self.class_names = tuple(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "background":
            raise DataError(f"class names must start with 'background' and name at least one class, got {self.class_names}")
        n = len(self.class_names)
        self._exemplars: dict[SliceRef, tuple[np.ndarray, np.ndarray]] = {}
        self._counts: dict[SliceRef, np.ndarray] = {}
        for ref, (img, lab) in exemplars.items():
            img = _check_image(img, f"exemplar {ref}")
            lab = np.asarray(lab)
            if lab.dtype != np.uint8 or lab.shape != img.shape:
                raise DataError(f"exemplar {ref}: label must be uint8 with the image's shape {img.shape}, "
                                f"got {lab.dtype} {lab.shape}")
            counts = np.bincount(lab.ravel(), minlength=n)
            if counts.size > n:
                raise DataError(f"exemplar {ref}: label value {counts.size - 1} outside the class set 0..{n - 1}")
            self._exemplars[ref] = (img, np.ascontiguousarray(lab))
            self._counts[ref] = counts
        if hasattr(backgrounds, "validate"):  # a synth.pool.BackgroundStore: compact, decoded on access
            backgrounds.validate(lambda ref, img: _check_image(img, f"background {ref}"))
            self._backgrounds = backgrounds
        else:
            self._backgrounds = {ref: _check_image(img, f"background {ref}") for ref, img in backgrounds.items()}
        # cheap per-background facts (slice index, volume length, content area) where the caller has them
        self.background_info = dict(getattr(backgrounds, "info", {}))
        self.exemplar_refs: list[SliceRef] = list(self._exemplars)
        self.background_refs: list[SliceRef] = list(self._backgrounds)
        if not self.exemplar_refs:
            raise DataError("no exemplar slices to synthesize from")
        if not self.background_refs:
            raise DataError("empty background pool: no slice without foreground to paste onto")
        self._objects: dict[tuple[SliceRef, int | None], ObjectInfo] = {}
        self._with_class: dict[tuple[int | None, int], list[SliceRef]] = {}
        self._content_bbox: dict[tuple[SliceRef, float], tuple[int, int, int, int] | None] = {}
        self._content_mask: dict[tuple[SliceRef, float], np.ndarray] = {}
        self._coverage: dict[tuple[SliceRef, SliceRef, float], float] = {}
        self._flat: dict[tuple[SliceRef, tuple[int, int]], np.ndarray] = {}

    def exemplar(self, ref: SliceRef) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._exemplars[ref]
        except KeyError:
            raise DataError(f"exemplar slice {ref} is not in the exemplar bank") from None

    def background(self, ref: SliceRef) -> np.ndarray:
        try:
            return self._backgrounds[ref]
        except KeyError:
            raise DataError(f"background slice {ref} is not in the background pool") from None

    def class_counts(self, ref: SliceRef) -> np.ndarray:
        self.exemplar(ref)
        return self._counts[ref]

    def exemplars_with(self, cls: int | None, min_pixels: int = 1) -> list[SliceRef]:
        """Exemplars (in bank order) with at least ``min_pixels`` of class ``cls`` (None: of any
        single foreground class)."""
        key = (cls, min_pixels)
        if key not in self._with_class:
            if cls is None:
                refs = [r for r in self.exemplar_refs if (self._counts[r][1:] >= min_pixels).any()]
            else:
                refs = [r for r in self.exemplar_refs if self._counts[r][cls] >= min_pixels]
            self._with_class[key] = refs
        return self._with_class[key]

    def object_info(self, ref: SliceRef, cls: int | None) -> ObjectInfo:
        """Geometry of class ``cls`` (None: all foreground) in an exemplar slice."""
        key = (ref, cls)
        info = self._objects.get(key)
        if info is None:
            _, lab = self.exemplar(ref)
            mask = lab > 0 if cls is None else lab == cls
            ys, xs = np.nonzero(mask)
            if ys.size == 0:
                raise DataError(f"exemplar slice {ref} has no pixels of class {cls}")
            step = max(1, -(-ys.size // _MAX_POINTS))
            pts = np.stack([xs[::step], ys[::step]], axis=1).astype(np.float64)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            crop = lab[y0:y1 + 1, x0:x1 + 1]
            if cls is not None:
                crop = (crop == cls).astype(np.uint8) * np.uint8(cls)
            info = ObjectInfo(int(ys.size), (y0, y1, x0, x1), (float(xs.mean()), float(ys.mean())), pts,
                              np.ascontiguousarray(crop))
            self._objects[key] = info
        return info

    def content_mask(self, ref: SliceRef, threshold: float) -> np.ndarray:
        """A background slice's content (body/head): pixels above ``threshold``."""
        key = (ref, threshold)
        if key not in self._content_mask:
            self._content_mask[key] = self.background(ref) > threshold
        return self._content_mask[key]

    def coverage(self, exemplar: SliceRef, background: SliceRef, threshold: float) -> float:
        """Fraction of an exemplar's foreground that falls on a background slice's content, by
        relative position (how well the background's anatomy matches the exemplar's); cached."""
        key = (exemplar, background, threshold)
        value = self._coverage.get(key)
        if value is None:
            mask = self.content_mask(background, threshold)
            idx = self._flat_points(exemplar, mask.shape)
            value = np.count_nonzero(mask.ravel()[idx]) / idx.size
            self._coverage[key] = value
        return value

    def _flat_points(self, ref: SliceRef, shape: tuple[int, int]) -> np.ndarray:
        """Flat indices, in a frame of ``shape``, of an exemplar's foreground sample points mapped by
        relative position (pixel edges aligned)."""
        key = (ref, shape)
        idx = self._flat.get(key)
        if idx is None:
            h, w = shape
            sh, sw = self.exemplar(ref)[0].shape
            pts = self.object_info(ref, None).points
            x = np.clip(np.rint((pts[:, 0] + 0.5) * (w / sw) - 0.5), 0, w - 1).astype(np.intp)
            y = np.clip(np.rint((pts[:, 1] + 0.5) * (h / sh) - 0.5), 0, h - 1).astype(np.intp)
            idx = self._flat[key] = y * w + x
        return idx

    def content_bbox(self, ref: SliceRef, threshold: float) -> tuple[int, int, int, int] | None:
        """Bounding box (y0, y1, x0, x1) of a background slice's content (pixels > threshold)."""
        key = (ref, threshold)
        if key not in self._content_bbox:
            img = self.background(ref)
            rows = np.flatnonzero((img > threshold).any(axis=1))
            cols = np.flatnonzero((img > threshold).any(axis=0))
            self._content_bbox[key] = (None if rows.size == 0 else
                                       (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])))
        return self._content_bbox[key]


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or img.shape[0] < 2 or img.shape[1] < 2:
        raise DataError(f"{what}: expected a 2D slice, got shape {img.shape}")
    if img.dtype != np.float32:
        img = img.astype(np.float32)
    if img.size and (not np.isfinite(img).all() or img.min() < -1e-4 or img.max() > 1 + 1e-4):
        raise DataError(f"{what}: image values must be finite and in [0, 1] (got {img.min():.4g}..{img.max():.4g})")
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0))


# =============================================================================================
# Config
# =============================================================================================

@dataclass(frozen=True)
class Placement:
    """Where and how objects are pasted (not random; the rules around the random draws)."""

    content_threshold: float = 0.02  # background "body" = pixels above this (after T')
    min_inside: float = 0.9  # the anatomy rule: this fraction of the object must land on body
    max_tries: int = 8  # drawn translations per scale (then no shift), after the drawn one and the moves
    background_candidates: int = 4  # background_choice "fit": eligible slices drawn, the best-covering used
    feather: bool = True  # blend a 1-pixel ring outside each pasted object 50/50
    mix_prob: float = 0.0  # multi: probability that organ k comes from another exemplar containing k
    min_object_pixels: int = 1  # objects smaller than this in their exemplar are not pasted
    background_choice: str = "fit"  # "fit": eligible slices for the object (synth.anatomy); "random": the pool
    level_ratio: float = 0.7  # "fit": content area within [r, 1/r] x the exemplar's (a compatible level)
    min_ring_content: float = 0.6  # the anatomy rule: this share of the ring 2-4 px outside must be tissue
    air_threshold: float = 0.04  # "air" (ring test): T'(Ib) below this
    shrink_steps: int = 3  # fallback scales, geometric from the drawn one down to the range's low end
    max_backgrounds: int = 4  # backgrounds tried for one exemplar before drawing a new pair
    max_pairs: int = 50  # (exemplar, background) pairs tried before the sample fails (DataError)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TaskConfig:
    object: TransformRanges  # T: each pasted object (tumour / organ), about its own centre
    background: TransformRanges  # T': the background slice, about the image centre
    placement: Placement

    def to_dict(self) -> dict:
        return {"object": self.object.to_dict(), "background": self.background.to_dict(),
                "placement": self.placement.to_dict()}


@dataclass(frozen=True)
class SynthesisConfig:
    """All ranges and rules of the synthesis; recorded in dataset.json (``to_json()``)."""

    single: TaskConfig
    multi: TaskConfig
    version: int = 1

    def task(self, name: str) -> TaskConfig:
        if name not in TASKS:
            raise ConfigError(f"unknown synthesis task {name!r}: expected one of {', '.join(TASKS)}")
        return getattr(self, name)

    def to_json(self) -> dict:
        return {"version": self.version, "single": self.single.to_dict(), "multi": self.multi.to_dict()}

    @classmethod
    def from_json(cls, data: Any, origin: str = "<config>") -> "SynthesisConfig":
        """Validate a config dict; missing keys take the defaults, unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: a synthesis config must be a JSON object, got {type(data).__name__}")
        merged = _merge(_default_raw(), data, origin, "")
        if merged.get("version") != 1:
            raise ConfigError(f"{origin}: version: unsupported synthesis config version {merged.get('version')!r} (expected 1)")
        return cls(single=_task_config(merged["single"], origin, "single"),
                   multi=_task_config(merged["multi"], origin, "multi"), version=1)


def load_config(path: str | Path | None = None, recipe: str = DEFAULT_RECIPE) -> SynthesisConfig:
    """A recipe's config (``extended``: synth/configs/synthesis.json; ``paper``: that with
    synth/configs/recipe_paper.json over it), with a user JSON file overriding any subset of it."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown synthesis recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    raw = _default_raw()
    if recipe in RECIPE_PATHS:
        raw = _merge(raw, json.loads(RECIPE_PATHS[recipe].read_text()), str(RECIPE_PATHS[recipe]), "")
    if path is None:
        return SynthesisConfig.from_json(raw, str(RECIPE_PATHS.get(recipe, DEFAULT_CONFIG_PATH)))
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: synthesis config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read synthesis config ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a synthesis config must be a JSON object, got {type(data).__name__}")
    return SynthesisConfig.from_json(_merge(raw, data, str(path), ""), str(path))


_DEFAULT_RAW: dict | None = None


def _default_raw() -> dict:
    global _DEFAULT_RAW  # read-only cache of a packaged file, not state
    if _DEFAULT_RAW is None:
        _DEFAULT_RAW = json.loads(DEFAULT_CONFIG_PATH.read_text())
    return json.loads(json.dumps(_DEFAULT_RAW))


def _merge(base: dict, over: dict, origin: str, prefix: str) -> dict:
    out = dict(base)
    for key, value in over.items():
        where = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{origin}: unknown key {where!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {where} must be an object")
            out[key] = _merge(base[key], value, origin, where + ".")
        else:
            out[key] = value
    return out


def _number(v: Any, origin: str, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{origin}: {where} must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{origin}: {where} must be in [{lo}, {hi}], got {v!r}")
    return float(v)


def _range(v: Any, origin: str, where: str, lo: float | None = None, hi: float | None = None,
           positive: bool = False) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ConfigError(f"{origin}: {where} must be a [low, high] pair, got {v!r}")
    a, b = (_number(x, origin, where, lo, hi) for x in v)
    if a > b:
        raise ConfigError(f"{origin}: {where} low {a} is above high {b}")
    if positive and a <= 0:
        raise ConfigError(f"{origin}: {where} must be > 0, got {a}")
    return a, b


def _ranges(d: dict, origin: str, where: str) -> TransformRanges:
    w = where + "."
    return TransformRanges(
        scale=_range(d["scale"], origin, w + "scale", 0.1, 10.0, positive=True),
        rotation=_range(d["rotation"], origin, w + "rotation", -180.0, 180.0),
        flip_h_prob=_number(d["flip_h_prob"], origin, w + "flip_h_prob", 0.0, 1.0),
        flip_v_prob=_number(d["flip_v_prob"], origin, w + "flip_v_prob", 0.0, 1.0),
        max_shift=_number(d["max_shift"], origin, w + "max_shift", 0.0, 0.5),
        blur_prob=_number(d["blur_prob"], origin, w + "blur_prob", 0.0, 1.0),
        blur_sigma=_range(d["blur_sigma"], origin, w + "blur_sigma", 0.0, 10.0),
        gain=_range(d["gain"], origin, w + "gain", 0.0, 10.0),
        gamma=_range(d["gamma"], origin, w + "gamma", 0.05, 20.0, positive=True),
        shift=_range(d["shift"], origin, w + "shift", -1.0, 1.0),
    )


def _task_config(d: dict, origin: str, where: str) -> TaskConfig:
    p = d["placement"]
    w = where + ".placement."
    tries = p["max_tries"]
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ConfigError(f"{origin}: {w}max_tries must be an integer >= 1, got {tries!r}")
    n_bg = p["background_candidates"]
    if isinstance(n_bg, bool) or not isinstance(n_bg, int) or not 1 <= n_bg <= 64:
        raise ConfigError(f"{origin}: {w}background_candidates must be an integer in [1, 64], got {n_bg!r}")
    min_px = p["min_object_pixels"]
    if isinstance(min_px, bool) or not isinstance(min_px, int) or min_px < 1:
        raise ConfigError(f"{origin}: {w}min_object_pixels must be an integer >= 1, got {min_px!r}")
    if not isinstance(p["feather"], bool):
        raise ConfigError(f"{origin}: {w}feather must be true or false, got {p['feather']!r}")
    ints = {}
    for key, lo, hi in (("shrink_steps", 0, 16), ("max_backgrounds", 1, 64), ("max_pairs", 1, 10000)):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{origin}: {w}{key} must be an integer in [{lo}, {hi}], got {v!r}")
        ints[key] = v
    if p["background_choice"] not in BACKGROUND_CHOICES:
        raise ConfigError(f"{origin}: {w}background_choice must be one of {', '.join(BACKGROUND_CHOICES)}, "
                          f"got {p['background_choice']!r}")
    placement = Placement(
        content_threshold=_number(p["content_threshold"], origin, w + "content_threshold", 0.0, 0.99),
        min_inside=_number(p["min_inside"], origin, w + "min_inside", 0.0, 1.0),
        max_tries=tries, background_candidates=n_bg, feather=p["feather"],
        mix_prob=_number(p["mix_prob"], origin, w + "mix_prob", 0.0, 1.0),
        min_object_pixels=min_px, background_choice=p["background_choice"],
        level_ratio=_number(p["level_ratio"], origin, w + "level_ratio", 0.01, 1.0),
        min_ring_content=_number(p["min_ring_content"], origin, w + "min_ring_content", 0.0, 1.0),
        air_threshold=_number(p["air_threshold"], origin, w + "air_threshold", 0.0, 0.99), **ints)
    return TaskConfig(object=_ranges(d["object"], origin, where + ".object"),
                      background=_ranges(d["background"], origin, where + ".background"),
                      placement=placement)


# =============================================================================================
# Synthesis
# =============================================================================================

def synthesize(index: int, seed: int, bank: SliceBank, config: SynthesisConfig,
               task: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``index`` of the dataset with ``seed``: image float32 HxW in [0, 1], label uint8 HxW,
    and its JSON-able record. Depends only on its arguments (not on call order or worker count)."""
    return _synthesize(index, seed, bank, config, task, _render_background, _paste_record)


def _synthesize(index: int, seed: int, bank: SliceBank, config: SynthesisConfig, task: str,
                render_background: Callable, paste_record: Callable) -> tuple[np.ndarray, np.ndarray, dict]:
    """The sampling, with the two rendering steps passed in (bench/naive_synthesis.py passes
    scipy.ndimage versions to time a straightforward implementation of the same draws)."""
    tc = config.task(task)
    pl = tc.placement
    seed, index = int(seed), int(index)
    rng = np.random.default_rng([seed, index])

    usable = bank.exemplars_with(None, pl.min_object_pixels)
    if not usable:
        raise DataError(f"no exemplar slice has an object of >= {pl.min_object_pixels} pixels to paste")
    scale_low = tc.object.scale[0]
    backgrounds_tried = 0
    # The anatomy rule (synth/anatomy.py): an object is pasted only where it lies on the
    # background's content. Fallbacks, in order: moved towards the content, redrawn positions,
    # smaller scales (search_placement); another background; a new (exemplar, background) pair.
    for pair in range(pl.max_pairs):
        # 1. Exemplar (the base: the tumour's slice, or the slice whose organs are pasted).
        base = usable[int(rng.integers(len(usable)))]
        if task == "single":
            wanted: list[tuple[int | None, SliceRef]] = [(None, base)]
        else:
            wanted = []
            counts = bank.class_counts(base)
            for k in range(1, len(bank.class_names)):
                if counts[k] < pl.min_object_pixels:
                    continue
                u = float(rng.random())
                others = bank.exemplars_with(k, pl.min_object_pixels)
                j = int(rng.integers(len(others)))
                wanted.append((k, others[j] if u < pl.mix_prob else base))
        for bg_try in range(pl.max_backgrounds):
            backgrounds_tried += 1
            # 2. Background: random from the pool (paper), or one that can hold the object ("fit").
            bg_ref, bg_match, bg_choice = choose_background(rng, bank, base, pl, scale_low)
            bg_src = bank.background(bg_ref)
            shape = bg_src.shape
            bg_params = sample_params(rng, tc.background, shape)
            bg_center = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
            bg_params = _clamp_background(bg_params, bg_center, shape,
                                          bank.content_bbox(bg_ref, pl.content_threshold), tc.background.max_shift)
            image = render_background(bg_src, bg_params, bg_center, bank.content_bbox(bg_ref, 0.0))

            # 3. Objects: draw all parameters first (fixed draw order), then place, then paste.
            drawn = []
            for cls, ref in wanted:
                params = sample_params(rng, tc.object, shape)
                extra = rng.uniform(-1.0, 1.0, size=(pl.max_tries - 1, 2))
                drawn.append((cls, ref, params, extra))
            objects = []
            ctx: dict = {}  # the background's padded frame and content centre, for all its objects
            for cls, ref, params, extra in drawn:
                info = bank.object_info(ref, cls)
                src_shape = bank.exemplar(ref)[0].shape
                placed = search_placement(info, anatomy_index(bank).ring(ref, cls), params, extra, src_shape,
                                          image, pl, scale_low, tc.object.max_shift, ctx)
                if placed is None:
                    break
                classes = ([int(c) for c in np.flatnonzero(bank.class_counts(ref)[1:]) + 1] if cls is None else [cls])
                obj = {"ref": ref.to_json(), "classes": classes, "pixels": info.count,
                       "center": [info.center[0], info.center[1]], "src_shape": [int(src_shape[0]), int(src_shape[1])],
                       "params": placed.params.to_dict(), "inside": placed.inside, "ring": placed.ring,
                       "placed": placed.step, "tries": placed.tries}
                if cls is not None:  # multi: the one organ cut out; single: every foreground class of the slice
                    obj["class"] = cls
                objects.append(obj)
            else:
                break  # every object placed
        else:
            continue  # no background took this exemplar: a new pair
        break
    else:
        raise DataError(f"sample {index} (seed {seed}): no placement meets the anatomy rule (>= {pl.min_inside:g} "
                        f"of the object on body, >= {pl.min_ring_content:g} of its ring on tissue) after "
                        f"{pl.max_pairs} exemplar/background pairs; check the background pool or lower "
                        f"placement.min_inside / min_ring_content")
    # Overlap rule: larger objects first, so smaller organs (pasted later) stay visible.
    objects.sort(key=lambda o: (-o["pixels"], o.get("class") or 0))

    label = np.zeros(shape, dtype=np.uint8)
    for obj in objects:
        paste_record(image, label, obj, bank, pl.feather)

    fallback = ("pair" if pair else "background" if bg_try else
                max((o["placed"] for o in objects), key=_STEP_ORDER.index))
    record = {"version": RECORD_VERSION, "task": task, "seed": [seed, index], "shape": [int(shape[0]), int(shape[1])],
              "exemplar": base.to_json(),
              "background": {"ref": bg_ref.to_json(), "center": [bg_center[0], bg_center[1]],
                             "params": bg_params.to_dict(), "match": bg_match, **bg_choice},
              "objects": objects,
              "placement": {"fallback": fallback, "pairs": pair + 1, "backgrounds": backgrounds_tried,
                            "tries": sum(o["tries"] for o in objects)}}
    # the pixel-level check of the result (docs/synthesis.md, "Floating objects")
    n_float, ring_air = floating_objects(image, label, task, sorted({o["class"] for o in objects if o.get("class")}))
    record["check"] = {"floating": n_float, "ring_air": round(ring_air, 4)}
    return image, label, record


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
        image = _render_background(bg_src, TransformParams.from_dict(bg["params"]),
                                   (float(bg["center"][0]), float(bg["center"][1])), bank.content_bbox(bg_ref, 0.0))
        label = np.zeros(bg_src.shape, dtype=np.uint8)
        for obj in record["objects"]:
            _paste_record(image, label, obj, bank, tc.placement.feather)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"sample record {record.get('seed')!r} is malformed ({type(exc).__name__}: {exc})") from None
    return image, label


# ---------------------------------------------------------------------------------------------

def _clamp(t: float, lo: float, hi: float) -> float:
    return t if lo > hi else min(max(t, lo), hi)


def _clamp_background(params: TransformParams, center: tuple[float, float], shape: tuple[int, int],
                      content: tuple[int, int, int, int] | None, max_shift: float) -> TransformParams:
    """Keep the background's content (e.g. the head) inside the frame by clamping the translation."""
    if content is None:
        return params
    fwd = forward_affine(params, center, shape, shape, with_translation=False)
    lx, hx, ly, hy = shift_bounds(fwd.bbox(content), shape, max_shift)
    return params.replace(tx=_clamp(params.tx, lx, hx), ty=_clamp(params.ty, ly, hy))


def _render_background(src: np.ndarray, params: TransformParams, center: tuple[float, float],
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


def _paste_record(image: np.ndarray, label: np.ndarray, obj: dict, bank: SliceBank, feather: bool) -> None:
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
