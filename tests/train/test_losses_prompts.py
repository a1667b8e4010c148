"""train.prompts, train.losses, train.resize on known inputs."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from train.losses import ce_dice_loss
from train.prompts import (center_point, present_classes, random_point, sample_training_prompt,
                           sample_training_prompts)
from train.resize import resize_image, resize_label, scale_points, upsample_logits


def test_center_point_known_shapes():
    mask = np.zeros((20, 30), bool)
    mask[2:9, 5:20] = True                      # 7 rows x 15 cols: centre row 5, cols 8..16 tie
    assert center_point(mask) == (8, 5)         # first in row-major order among the ties
    disk = np.zeros((41, 41), bool)
    yy, xx = np.mgrid[:41, :41]
    disk[(xx - 25) ** 2 + (yy - 12) ** 2 <= 64] = True
    assert center_point(disk) == (25, 12)
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True                          # touches the image edge: the edge is border too
    x, y = center_point(edge)
    assert (x, y) == (1, 1)                     # distance 2 from left pad, right border, top pad
    ring = np.zeros((21, 21), bool)             # C shape: the point must lie inside the mask
    ring[(np.hypot(*np.mgrid[-10:11, -10:11]) >= 6) & (np.hypot(*np.mgrid[-10:11, -10:11]) <= 10)] = True
    ring[8:13, 15:] = False
    x, y = center_point(ring)
    assert ring[y, x]
    with pytest.raises(ValueError):
        center_point(np.zeros((4, 4), bool))


def test_random_and_training_prompts_only_on_present_classes():
    label = np.zeros((32, 32), np.uint8)
    label[3:8, 4:10] = 2
    label[20:30, 20:22] = 5
    assert present_classes(label).tolist() == [2, 5]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        cls, (x, y), target = sample_training_prompt(label, rng)
        seen.add(cls)
        assert label[y, x] == cls
        assert np.array_equal(target, (label == cls).astype(np.uint8))
    assert seen == {2, 5}
    assert sample_training_prompt(np.zeros((5, 5), np.uint8), rng) is None
    a = [sample_training_prompt(label, np.random.default_rng(1))[1] for _ in range(2)]
    assert a[0] == a[1]                          # reproducible from the seed
    x, y = random_point(label == 5, rng)
    assert label[y, x] == 5


def test_batched_prompts():
    labels = torch.zeros(3, 16, 16, dtype=torch.uint8)
    labels[0, 2:5, 2:5] = 1
    labels[0, 10:12, 10:14] = 3
    labels[1, 8:9, 0:16] = 2
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        classes, points, plabels, targets = sample_training_prompts(labels, 3, g)
        assert classes[2] == 0 and targets[2].sum() == 0          # no foreground
        assert classes[1] == 2
        seen.add(int(classes[0]))
        for i in range(2):
            x, y = points[i, 0].long().tolist()
            assert labels[i, y, x] == classes[i]
            assert torch.equal(targets[i], (labels[i] == classes[i]).float())
        assert plabels.shape == (3, 1) and (plabels == 1).all()
    assert seen == {1, 3}


def test_binary_loss_values():
    logits = torch.zeros(2, 1, 4, 4)
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1                            # half the pixels
    loss, ce, dice = ce_dice_loss(logits, target)
    assert ce.item() == pytest.approx(math.log(2), abs=1e-6)
    # p = 0.5 everywhere: Dice = 2 * 4 / (8 + 8) = 0.5
    assert dice.item() == pytest.approx(0.5, abs=1e-5)
    assert loss.item() == pytest.approx(math.log(2) + 0.8 * 0.5, abs=1e-5)
    perfect = (target * 40 - 20)[:, None]
    loss, ce, dice = ce_dice_loss(perfect, target)
    assert loss.item() < 1e-6
    _, _, dice_w = ce_dice_loss(logits, target, ce_weight=0.0)
    assert dice_w.item() == pytest.approx(0.5, abs=1e-5)


def test_multiclass_loss_values():
    target = torch.tensor([[[0, 1], [2, 2]]])    # (1, 2, 2), classes 0..2
    logits = torch.zeros(1, 3, 2, 2)
    loss, ce, dice = ce_dice_loss(logits, target)
    assert ce.item() == pytest.approx(math.log(3), abs=1e-6)
    # p = 1/3: class 1 Dice = (2/3) / (4/3 + 1) = 2/7; class 2 = (4/3) / (4/3 + 2) = 2/5
    assert dice.item() == pytest.approx(1 - (2 / 7 + 2 / 5) / 2, abs=1e-5)
    _, _, dice_bg = ce_dice_loss(logits, target, include_background=True)
    assert dice_bg.item() == pytest.approx(1 - (2 / 7 + 2 / 7 + 2 / 5) / 3, abs=1e-5)
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 30
    assert ce_dice_loss(good, target)[0].item() < 1e-5


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


def test_binary_dice_per_sample_or_over_the_batch():
    """p = 0.5 everywhere; sample A has 1 of 4 pixels foreground, B 3 of 4.
    Per sample: A = 2*0.5/(2+1) = 1/3, B = 2*1.5/(2+3) = 3/5 -> loss 1 - (1/3 + 3/5)/2.
    Over the batch: 2*(0.5+1.5)/(4+4) = 1/2 -> loss 1/2."""
    target = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    logits = torch.zeros(2, 1, 2, 2)
    _, ce, dice = ce_dice_loss(logits, target)
    assert dice.item() == pytest.approx(1 - (1 / 3 + 3 / 5) / 2, abs=1e-5)
    _, ce_b, dice_b = ce_dice_loss(logits, target, dice_reduction="batch")
    assert dice_b.item() == pytest.approx(0.5, abs=1e-5) and ce_b.item() == pytest.approx(ce.item())
    with pytest.raises(ValueError):
        ce_dice_loss(logits, target, dice_reduction="volume")


def test_bounding_box_and_jittered_box():
    from train.prompts import Prompt, bounding_box, jittered_box

    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:16] = True
    assert bounding_box(mask) == (10, 5, 15, 8)
    assert bounding_box(mask, 5) == (5, 0, 20, 13)            # clipped at the top
    assert bounding_box(mask, 40) == (0, 0, 29, 19)
    rng = np.random.default_rng(0)
    boxes = np.array([jittered_box(mask, 3, rng) for _ in range(200)])
    assert (boxes[:, :2] <= [10, 5]).all() and (boxes[:, :2] >= [7, 2]).all()
    assert (boxes[:, 2:] >= [15, 8]).all() and (boxes[:, 2:] <= [18, 11]).all()
    assert len({tuple(b) for b in boxes}) > 20                  # every side drawn on its own
    assert jittered_box(mask, 0, rng) == bounding_box(mask)
    a, b = (jittered_box(mask, 5, np.random.default_rng([1, 2])) for _ in range(2))
    assert a == b
    assert Prompt.around((1, 2, 3, 4)).kind == "box" and Prompt.at((1, 2)).kind == "point"
    with pytest.raises(ValueError):
        Prompt()
    with pytest.raises(ValueError):
        Prompt(points=((1.0, 2.0),), box=(0.0, 0.0, 1.0, 1.0))
