"""train.resize.InputGeometry: square and longest-side inputs, points, boxes and logits back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.resize import InputGeometry, longest_side_hw, resize_image, resize_label, scale_points


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
