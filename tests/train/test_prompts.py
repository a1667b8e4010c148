"""train.prompts on known inputs: centre and random points, training prompts, boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.prompts import (center_point, present_classes, random_point, sample_training_prompt,
                           sample_training_prompts)


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
