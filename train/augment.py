"""Train-time augmentation: sample parameters from a seeded rng, then apply a pure function.

TorchIO style: :func:`sample_augment` draws a small record of parameters (JSON-able), and
:func:`apply_augment` applies it to an (image, label) pair already at model size. Geometric
transforms move image (linear) and label (nearest) together; intensity transforms touch the image.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from train.config import AugmentConfig


def sample_augment(cfg: AugmentConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one sample's augmentation parameters (always the same number of draws per knob)."""
    u = rng.random(8)
    params: dict[str, Any] = {}
    if cfg.flip_prob > 0:
        params["hflip"] = bool(u[0] < cfg.flip_prob)
        params["vflip"] = bool(u[1] < cfg.flip_prob)
    if cfg.rot90_prob > 0 and u[2] < cfg.rot90_prob:
        params["rot90"] = int(1 + min(2, int(u[3] * 3)))
    if cfg.rotate_deg > 0 or cfg.scale_range > 0:
        params["angle"] = float((2 * u[4] - 1) * cfg.rotate_deg)
        params["scale"] = float(1 + (2 * u[5] - 1) * cfg.scale_range)
    if cfg.intensity_scale > 0 or cfg.intensity_shift > 0 or cfg.gamma_range > 0:
        v = rng.random(3)
        params["mul"] = float(1 + (2 * v[0] - 1) * cfg.intensity_scale)
        params["add"] = float((2 * v[1] - 1) * cfg.intensity_shift)
        params["gamma"] = float(np.exp((2 * v[2] - 1) * cfg.gamma_range))
    return params


def apply_augment(image: np.ndarray, label: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply `params` (from :func:`sample_augment`) to a float32 image in [0, 1] and its uint8 label."""
    if params.get("hflip"):
        image, label = image[:, ::-1], label[:, ::-1]
    if params.get("vflip"):
        image, label = image[::-1], label[::-1]
    if params.get("rot90"):
        image, label = np.rot90(image, params["rot90"]), np.rot90(label, params["rot90"])
    angle, scale = params.get("angle", 0.0), params.get("scale", 1.0)
    if angle != 0.0 or scale != 1.0:
        h, w = image.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
        image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        label = cv2.warpAffine(np.ascontiguousarray(label), m, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if "mul" in params:
        image = np.clip(image * params["mul"] + params["add"], 0.0, 1.0) ** params["gamma"]
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)
