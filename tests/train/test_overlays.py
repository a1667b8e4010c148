"""train.overlays: what a drawn overlay holds (size, class colours, outline vs fill, points)."""
from __future__ import annotations

import cv2
import numpy as np

from train.overlays import (CLASS_BGR, FILL_ALPHA, MIN_SIDE, POINT_BGR, class_colour, render_overlay,
                            write_overlays)

NAMES = ("background", "liver", "spleen")


def _slice(size=64):
    image = np.full((size, size), 0.5, np.float32)
    label = np.zeros((size, size), np.uint8)
    label[10:30, 10:30] = 1           # liver: predicted too (fill inside outline)
    label[40:56, 40:56] = 2           # spleen: missed (outline only)
    pred = np.zeros_like(label)
    pred[12:28, 12:28] = 1
    pred[2:8, 50:60] = 2              # a false spleen (fill without outline)
    return image, label, pred


def test_render_overlay_size_fills_and_outlines():
    image, label, pred = _slice()
    pic = render_overlay(image, label, pred, "case1 slice 3", NAMES, points=[(1, 20.0, 20.0)])
    scale = int(np.ceil(MIN_SIDE / 64))                   # small slices are enlarged
    assert pic.dtype == np.uint8 and pic.shape[1] == 64 * scale and pic.shape[2] == 3
    body = pic[pic.shape[0] - 64 * scale:]                # below the title and legend bar
    assert body.shape[:2] == (64 * scale, 64 * scale)
    grey = 127
    fill = np.round(np.asarray(class_colour(1)) * FILL_ALPHA + grey * (1 - FILL_ALPHA))
    assert np.abs(body[16 * scale, 16 * scale].astype(int) - fill).max() <= 2       # liver fill
    false_fill = np.round(np.asarray(class_colour(2)) * FILL_ALPHA + grey * (1 - FILL_ALPHA))
    assert np.abs(body[5 * scale, 55 * scale].astype(int) - false_fill).max() <= 2  # false spleen
    assert tuple(body[48 * scale, 40 * scale]) == class_colour(2)                   # spleen outline
    assert np.abs(body[48 * scale, 48 * scale].astype(int) - grey).max() <= 1       # missed: no fill
    assert tuple(body[63 * scale, 2 * scale]) == (grey, grey, grey)                 # plain tissue
    # the prompt point's yellow cross is drawn (hollow centre) and the legend shows the classes
    assert (np.all(body == POINT_BGR, axis=-1)).sum() > 0
    bar = pic[: pic.shape[0] - 64 * scale]
    for c in (1, 2):
        assert np.all(bar == class_colour(c), axis=-1).sum() > 20   # each class's legend swatch


def test_class_colours_cycle_and_write_overlays(tmp_path):
    assert class_colour(1) == CLASS_BGR[0] and class_colour(len(CLASS_BGR) + 1) == CLASS_BGR[0]
    assert POINT_BGR not in CLASS_BGR
    image, label, pred = _slice(32)
    items = [{"volume": "v1", "slice": 7, "dice": 0.25, "image": image, "label": label, "pred": pred},
             {"volume": "v2", "slice": 3, "dice": 0.5, "image": image, "label": label, "pred": pred,
              "points": [(1, 5.0, 6.0)], "affine": np.eye(4)}]
    paths = write_overlays(tmp_path / "ov", items, NAMES)
    assert [p.name for p in paths] == ["01_v1_slice007.png", "02_v2_slice003.png"]
    first = cv2.imread(str(paths[0]))
    assert first is not None and first.shape[1] == 32 * int(np.ceil(MIN_SIDE / 32))
