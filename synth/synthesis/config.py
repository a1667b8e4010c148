"""The synthesis config: transform ranges and placement rules per task, recipes, validation.

``synth/configs/synthesis.json`` is the ``extended`` recipe; ``paper`` is that with
``synth/configs/recipe_paper.json`` over it; a user's ``--synthesis-config`` file overrides any
subset of keys. :func:`load_config` resolves the three into a :class:`SynthesisConfig`, which is
recorded in full in dataset.json (``to_json``) and read back from it by ``synth verify --replay``
(``from_json``). Unknown keys and values out of range are ConfigErrors naming the key.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.fileio import read_json
from synth.synthesis.transforms import TransformRanges

TASKS = ("single", "multi")
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "synthesis.json"
# Named recipes (``synth build --recipe``): overrides applied to synthesis.json (= "extended").
RECIPES = ("extended", "paper")
DEFAULT_RECIPE = "extended"
RECIPE_PATHS = {"paper": Path(__file__).resolve().parents[1] / "configs" / "recipe_paper.json"}
BACKGROUND_CHOICES = ("fit", "random")


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
    background_choice: str = "fit"  # "fit": eligible slices for the object (synth.synthesis.background_choice); "random": the pool
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
        raw = _merge(raw, read_json(RECIPE_PATHS[recipe], what="recipe file", error=ConfigError),
                     str(RECIPE_PATHS[recipe]), "")
    if path is None:
        return SynthesisConfig.from_json(raw, str(RECIPE_PATHS.get(recipe, DEFAULT_CONFIG_PATH)))
    path = Path(path)
    data = read_json(path, what="synthesis config file", error=ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a synthesis config must be a JSON object, got {type(data).__name__}")
    return SynthesisConfig.from_json(_merge(raw, data, str(path), ""), str(path))


_DEFAULT_RAW: dict | None = None


def _default_raw() -> dict:
    global _DEFAULT_RAW  # read-only cache of a packaged file, not state
    if _DEFAULT_RAW is None:
        _DEFAULT_RAW = read_json(DEFAULT_CONFIG_PATH, what="synthesis config file", error=ConfigError)
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
