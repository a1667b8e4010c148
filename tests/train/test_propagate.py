"""train.propagate: slice-by-slice propagation with a fake predictor on synthetic volumes."""
from __future__ import annotations

import numpy as np
import pytest

from train.prompts import Prompt, bounding_box, center_point
from train.propagate import Seed, next_prompt, propagate


def _ball(shape, centre, radius):
    s, h, w = shape
    z, y, x = np.ogrid[:s, :h, :w]
    return ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2


class FakeModel:
    """'Segments' the connected truth component under the prompt: a box gets the truth pixels inside
    it, a click the truth pixels of the component it hits. Logits +1 inside, -1 outside; records
    every call and which slices are held (encoded, not released)."""

    def __init__(self, truth: np.ndarray):
        self.truth = truth  # (S, h, w) int labels
        self.calls: list[tuple[int, list[Prompt]]] = []
        self.encoded: list[int] = []
        self.held: set[int] = set()
        self.peak = 0

    def logits(self, k, prompts):
        if k not in self.held:
            self.encoded.append(k)
            self.held.add(k)
            self.peak = max(self.peak, len(self.held))
        self.calls.append((k, list(prompts)))
        out = []
        for p in prompts:
            m = np.zeros(self.truth.shape[1:], bool)
            if p.box is not None:
                x0, y0, x1, y1 = (int(v) for v in p.box)
                m[y0:y1 + 1, x0:x1 + 1] = self.truth[k, y0:y1 + 1, x0:x1 + 1] > 0
            else:
                x, y = (int(v) for v in p.points[0])
                c = self.truth[k, y, x]
                m = (self.truth[k] == c) if c > 0 else m
            out.append(np.where(m, 1.0, -1.0))
        return np.stack(out) if out else np.zeros((0, *self.truth.shape[1:]))

    def release(self, k):
        self.held.discard(k)


def test_one_box_segments_the_whole_structure_up_and_down():
    shape = (20, 32, 32)
    ball = _ball(shape, (9, 16, 16), 6)
    truth = ball.astype(np.uint8)
    fake = FakeModel(truth)
    k0 = 9
    seed = Seed(1, k0, Prompt.around(bounding_box(truth[k0] == 1)), "box")
    res = propagate(shape, [seed], fake.logits, release=fake.release, margin=2)
    assert np.array_equal(res.labels, truth)
    assert res.chains[0].extent == (3, 15)
    # slices above and below the ball are asked once each (the mask vanished there), nothing further
    assert sorted(fake.encoded) == list(range(2, 17))
    assert len(fake.encoded) == len(set(fake.encoded)) == res.encoded
    assert not fake.held  # every embedding released
    # the next slice's prompt is the previous mask's box widened by the margin
    first_up = next(p for k, ps in fake.calls if k == k0 + 1 for p in ps)
    assert first_up.box == bounding_box(truth[k0] == 1, 2)
    first_down = next(p for k, ps in fake.calls if k == k0 - 1 for p in ps)
    assert first_down.box == bounding_box(truth[k0] == 1, 2)


def test_without_propagation_only_the_seed_slices():
    shape = (10, 16, 16)
    truth = _ball(shape, (5, 8, 8), 4).astype(np.uint8)
    fake = FakeModel(truth)
    seeds = [Seed(1, 4, Prompt.around(bounding_box(truth[4] == 1))), Seed(1, 6, Prompt.at((8, 8)), "point")]
    res = propagate(shape, seeds, fake.logits, release=fake.release, propagate=False)
    assert sorted(fake.encoded) == [4, 6]
    assert np.array_equal(res.labels[[4, 6]], truth[[4, 6]])
    assert not res.labels[[0, 1, 2, 3, 5, 7, 8, 9]].any()


def test_point_chains_follow_the_centre_point():
    shape = (12, 24, 24)
    truth = _ball(shape, (6, 12, 10), 4).astype(np.uint8)
    fake = FakeModel(truth)
    seed = Seed(1, 6, Prompt.at(center_point(truth[6] == 1)), "point")
    res = propagate(shape, [seed], fake.logits, release=fake.release)
    assert np.array_equal(res.labels, truth)
    for k, ps in fake.calls:
        if k == 7:
            assert ps[0].points == ((float(center_point(truth[6] == 1)[0]), float(center_point(truth[6] == 1)[1])),)


def test_several_classes_share_each_slice_encoding():
    """Three structures seeded on different slices: every slice is encoded once, the embeddings held
    between the two sweeps are at most the seeds' span, and each class gets its own label."""
    shape = (30, 40, 40)
    truth = np.zeros(shape, np.uint8)
    truth[_ball(shape, (8, 10, 10), 5)] = 1
    truth[_ball(shape, (14, 28, 28), 7)] = 2
    truth[_ball(shape, (20, 10, 30), 5)] = 3
    fake = FakeModel(truth)
    seeds = [Seed(c, k, Prompt.around(bounding_box(truth[k] == c))) for c, k in ((1, 8), (2, 14), (3, 20))]
    res = propagate(shape, seeds, fake.logits, release=fake.release)
    assert np.array_equal(res.labels, truth)
    assert len(fake.encoded) == len(set(fake.encoded)) == res.encoded
    assert fake.peak <= 20 - 8 + 1
    assert not fake.held
    # structures that share slices are decoded together on them
    shared = [ps for k, ps in fake.calls if k == 12]
    assert len(shared) <= 2 and sum(len(ps) for ps in shared) == 2


def test_overlaps_go_to_the_highest_logit_and_chains_are_independent():
    shape = (3, 8, 8)

    def logits(k, prompts):
        out = []
        for p in prompts:
            lg = np.full((8, 8), -1.0)
            x0, y0, x1, y1 = (int(v) for v in p.box)
            lg[y0:y1 + 1, x0:x1 + 1] = 2.0 if x0 == 0 else 1.0  # class 1's box starts at x 0
            out.append(lg)
        return np.stack(out)

    seeds = [Seed(2, 1, Prompt.around((2, 2, 6, 6))), Seed(1, 1, Prompt.around((0, 0, 3, 3)))]
    res = propagate(shape, seeds, logits, margin=0)
    assert res.labels[1, 3, 3] == 1 and res.labels[1, 5, 5] == 2 and res.labels[1, 0, 0] == 1
    # class 2 follows its own mask (the full 5 x 5 box), not what is left of it after the overlap
    assert res.labels[0, 2, 2] == 1 and res.labels[0, 6, 6] == 2 and res.labels[2, 6, 6] == 2


def test_ties_go_to_the_lower_class_as_predict_slices():
    def logits(k, prompts):
        return np.ones((len(prompts), 4, 4))

    seeds = [Seed(3, 0, Prompt.around((0, 0, 3, 3))), Seed(2, 0, Prompt.around((0, 0, 3, 3)))]
    res = propagate((1, 4, 4), seeds, logits, propagate=False)
    assert (res.labels == 2).all()


def test_min_pixels_stops_a_chain_at_a_sliver():
    shape = (10, 16, 16)
    truth = np.zeros(shape, np.uint8)
    truth[2:8, 4:12, 4:12] = 1
    truth[8, 6, 6] = 1  # a one-pixel tip above
    truth[9, 6:9, 6:9] = 1
    fake = FakeModel(truth)
    seed = Seed(1, 5, Prompt.around((4, 4, 11, 11)))
    res = propagate(shape, [seed], fake.logits, min_pixels=2)
    assert res.labels[8, 6, 6] == 1 and not res.labels[9].any()  # the sliver is kept, the chain ends there
    res = propagate(shape, [seed], FakeModel(truth).logits, min_pixels=1)
    assert res.labels[9].any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="outside"):
        propagate((4, 4, 4), [Seed(1, 4, Prompt.at((1, 1)))], lambda k, p: np.zeros((len(p), 4, 4)))
    with pytest.raises(ValueError, match="follow"):
        Seed(1, 0, Prompt.at((1, 1)), "lasso")
    with pytest.raises(ValueError, match="shape"):
        propagate((4, 4, 4), [Seed(1, 0, Prompt.at((1, 1)))], lambda k, p: np.zeros((len(p), 3, 4)))
    assert next_prompt(np.eye(4, dtype=bool), "box", 1).box == (0, 0, 3, 3)
    res = propagate((2, 4, 4), [], lambda k, p: None)
    assert res.encoded == 0 and not res.labels.any()
