"""train.resize: plain resizes of images, labels, points and logits; InputGeometry (square and longest-side inputs, points, boxes and logits back)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from train.resize import (InputGeometry, longest_side_hw, resize_image, resize_label, scale_points,
                          upsample_logits)


def test_square_mode_is_the_plain_resize():
    g = InputGeometry(32, "square")
    img = np.random.default_rng(0).random((40, 24), dtype=np.float32)
    lbl = (img > 0.5).astype(np.uint8)
    assert np.array_equal(g.image(img), resize_image(img, 32))
    assert np.array_equal(g.label(lbl), resize_label(lbl, 32))
    assert np.array_equal(g.points([[3, 5]], (40, 24)), scale_points([[3, 5]], (40, 24), 32))


def test_longest_side_keeps_the_aspect_and_pads_bottom_right():
    assert longest_side_hw((122, 101), 256) == (256, 212)      # Synapse sample slice
    assert longest_side_hw((240, 240), 256) == (256, 256)
    g = InputGeometry(256, "longest_side")
    img = np.ones((101, 122), np.float32)
    out = g.image(img)
    nh, nw = g.content_hw(img.shape)
    assert (nh, nw) == (212, 256)
    assert np.all(out[:nh, :nw] == 1) and np.all(out[nh:] == 0)
    lbl = np.zeros((101, 122), np.uint8)
    lbl[50, 61] = 2
    got = g.label(lbl)
    assert set(np.unique(got)) == {0, 2} and not got[nh:].any()


def test_longest_side_points_boxes_and_logits_round_trip():
    g = InputGeometry(256, "longest_side")
    hw = (101, 122)
    nh, nw = g.content_hw(hw)
    scale = np.array([nw / hw[1], nh / hw[0]])
    xy = np.array([[0.0, 0.0], [121.0, 100.0], [60.0, 30.0]])
    assert np.allclose(g.points(xy, hw), (xy + 0.5) * scale - 0.5, atol=1e-4)
    box = g.boxes([10, 20, 50, 60], hw)
    assert np.allclose(box, np.r_[(np.array([10, 20]) + 0.5) * scale - 0.5,
                                  (np.array([50, 60]) + 0.5) * scale - 0.5], atol=1e-4)
    # a logit map made from the slice's own pixels comes back at the slice's size and place
    mask = np.zeros(hw, np.float32)
    mask[30:70, 40:90] = 1
    logits = torch.from_numpy(g.image(mask) * 2 - 1)[None, None]
    back = g.logits_to_slice(logits, hw)[0, 0].numpy() > 0
    assert back.shape == hw
    assert (back == mask.astype(bool)).mean() > 0.99


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        InputGeometry(64, "crop")


def test_resize_helpers():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert resize_image(img, 8).shape == (8, 8) and resize_image(img, 8).dtype == np.float32
    lbl = np.zeros((4, 6), np.uint8)
    lbl[:, 3:] = 7
    out = resize_label(lbl, 12)
    assert set(np.unique(out)) == {0, 7} and out.dtype == np.uint8
    # pixel centres: (0, 0) in 4x4 -> 0.5 in 8x8 -> 0.5; the last pixel maps to the last centre
    assert scale_points([[0, 0], [3, 3]], (4, 4), 8).tolist() == [[0.5, 0.5], [6.5, 6.5]]
    assert scale_points([[1, 0]], (4, 2), 4).tolist() == [[2.5, 0.0]]
    logits = torch.randn(2, 3, 8, 8)
    assert upsample_logits(logits, (16, 12)).shape == (2, 3, 16, 12)
    assert upsample_logits(logits, (8, 8)) is logits


def test_label_resize_stays_aligned_with_the_image_resize():
    """Issue 18: labels are resized with the pixel-centre convention of the bilinear image resize.
    cv2.INTER_NEAREST (floor(i * scale)) put a 240 -> 128 label ~0.45 output pixels off its image;
    now output pixel i takes input pixel floor((i + 0.5) * 240 / 128), and the centroids of random
    boxes agree with those of the bilinearly resized mask to within a fraction of a pixel."""
    ramp = np.tile(np.arange(240, dtype=np.uint8), (2, 1))
    row = cv2.resize(ramp, (128, 2), interpolation=cv2.INTER_NEAREST_EXACT)[0]
    assert resize_label(np.tile(np.arange(240, dtype=np.uint8), (240, 1)), 128)[0].tolist() == row.tolist()
    assert row[:6].tolist() == [int((i + 0.5) * 240 / 128) for i in range(6)] == [0, 2, 4, 6, 8, 10]
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(40):
        lbl = np.zeros((240, 240), np.uint8)
        y0, x0 = rng.integers(20, 150, 2)
        h, w = rng.integers(5, 60, 2)
        lbl[y0:y0 + h, x0:x0 + w] = 3
        small = resize_label(lbl, 128)
        soft = resize_image((lbl > 0).astype(np.float32), 128)
        ys, xs = np.nonzero(small)
        yb, xb = np.nonzero(soft > 0.5)
        offsets.append((ys.mean() - yb.mean(), xs.mean() - xb.mean()))
    offsets = np.asarray(offsets)
    assert np.abs(offsets.mean(0)).max() < 0.05 and np.abs(offsets).max() < 0.3
