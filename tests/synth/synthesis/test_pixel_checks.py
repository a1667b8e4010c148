"""The pixel checks of the anatomy rule (synth/synthesis/pixel_checks.py): the 2-4 px ring, the floating
measure, and samples of the brain bank that do not float."""
from __future__ import annotations

import numpy as np

from synth.synthesis.config import load_config
from synth.synthesis.pixel_checks import floating_objects, ring_air_fraction, ring_mask
from synth.synthesis.sample import synthesize
from synthkit import ellipse, brain_bank

CONFIG = load_config()


def test_ring_mask_is_the_2_to_4_px_band() -> None:
    mask = np.zeros((40, 40), bool)
    mask[15:22, 12:20] = True
    mask[22, 14] = True
    ring = ring_mask(mask)
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[:40, :40]
    dist = np.sqrt(((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2)).min(axis=-1)
    assert np.array_equal(ring, (dist >= 2) & (dist <= 4))


def test_floating_measure() -> None:
    shape = (60, 60)
    head = ellipse(shape, 30, 30, 20, 20)
    image = np.where(head, 0.5, 0.0).astype(np.float32)
    inside = ellipse(shape, 30, 30, 5, 5)
    outside = ellipse(shape, 5, 5, 3, 3)
    edge = ellipse(shape, 30, 10, 5, 5)  # straddles the head's edge
    lab = np.zeros(shape, np.uint8)
    lab[inside] = 1
    assert floating_objects(image, lab, "single") == (0, 0.0)
    lab[:] = 0
    lab[outside] = 1
    n, air = floating_objects(image, lab, "single")
    assert n == 1 and air == 1.0
    assert 0.2 < ring_air_fraction(image, edge) < 0.8
    multi = np.zeros(shape, np.uint8)
    multi[inside] = 2
    multi[outside] = 5
    assert floating_objects(image, multi, "multi")[0] == 1


def test_brain_bank_samples_do_not_float() -> None:
    bank = brain_bank()
    for i in range(30):
        image, label, rec = synthesize(i, 0, bank, CONFIG, "single")
        assert rec["check"]["floating"] == 0
        assert floating_objects(image, label, "single")[0] == 0
