"""Train-time augmentation: sample parameters from a seeded rng, then apply a pure function.

TorchIO style: :func:`sample_augment` draws an :class:`AugmentParams` record (typed; a plain
dict through :meth:`AugmentParams.to_dict`), and :func:`apply_augment` applies it to an (image, label)
pair already at model size. Geometric transforms move image (linear) and label (nearest)
together; intensity transforms touch the image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from train.config import AugmentConfig


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation; the defaults leave the sample unchanged."""

    hflip: bool = False
    vflip: bool = False
    rot90: int = 0                  # quarter turns counter-clockwise (np.rot90), 0..3
    angle: float = 0.0              # small rotation in degrees
    scale: float = 1.0              # zoom about the centre
    intensity: bool = False         # apply image * mul + add, clipped to [0, 1], then ** gamma
    mul: float = 1.0
    add: float = 0.0
    gamma: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sample_augment(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one sample's augmentation parameters (always the same number of draws per knob)."""
    u = rng.random(8)
    flips = cfg.flip_prob > 0
    rot90 = int(1 + min(2, int(u[3] * 3))) if cfg.rot90_prob > 0 and u[2] < cfg.rot90_prob else 0
    geometric = cfg.rotate_deg > 0 or cfg.scale_range > 0
    params = AugmentParams(
        hflip=flips and bool(u[0] < cfg.flip_prob), vflip=flips and bool(u[1] < cfg.flip_prob), rot90=rot90,
        angle=float((2 * u[4] - 1) * cfg.rotate_deg) if geometric else 0.0,
        scale=float(1 + (2 * u[5] - 1) * cfg.scale_range) if geometric else 1.0)
    if cfg.intensity_scale > 0 or cfg.intensity_shift > 0 or cfg.gamma_range > 0:
        v = rng.random(3)
        params = dataclasses.replace(params, intensity=True,
                                     mul=float(1 + (2 * v[0] - 1) * cfg.intensity_scale),
                                     add=float((2 * v[1] - 1) * cfg.intensity_shift),
                                     gamma=float(np.exp((2 * v[2] - 1) * cfg.gamma_range)))
    return params


def apply_augment(image: np.ndarray, label: np.ndarray, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply `params` (from :func:`sample_augment`) to a float32 image in [0, 1] and its uint8 label."""
    if params.hflip:
        image, label = image[:, ::-1], label[:, ::-1]
    if params.vflip:
        image, label = image[::-1], label[::-1]
    if params.rot90:
        image, label = np.rot90(image, params.rot90), np.rot90(label, params.rot90)
    if params.angle != 0.0 or params.scale != 1.0:
        h, w = image.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), params.angle, params.scale)
        image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        label = cv2.warpAffine(np.ascontiguousarray(label), m, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if params.intensity:
        image = np.clip(image * params.mul + params.add, 0.0, 1.0) ** params.gamma
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)
