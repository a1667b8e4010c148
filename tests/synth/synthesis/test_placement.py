"""The placement search of the anatomy rule (synth/synthesis/placement.py): placement never leaves an
object off the body, fallbacks are recorded and replay exactly, the recipes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from shared.errors import ConfigError, DataError
from synth.synthesis.bank import SliceBank, SliceRef
from synth.synthesis.config import SynthesisConfig, load_config
from synth.synthesis.pixel_checks import floating_objects
from synth.synthesis.sample import replay, synthesize
from synthkit import abdomen_bank, ellipse, small_heads_bank

CONFIG = load_config()


def _check_rule(image, label, record, cfg, task):
    pl = cfg.task(task).placement
    for obj in record["objects"]:
        assert obj["inside"] >= pl.min_inside
        assert obj["ring"] >= pl.min_ring_content
        assert obj["placed"] in ("drawn", "moved", "redrawn", "shrunk")
    assert record["placement"]["fallback"] in ("drawn", "moved", "redrawn", "shrunk", "background", "pair")
    assert record["check"]["floating"] == floating_objects(image, label, task)[0]


@pytest.mark.parametrize("recipe", ["extended", "paper"])
def test_placement_never_breaks_the_rule_and_replays(recipe: str) -> None:
    bank = small_heads_bank()
    cfg = load_config(None, recipe)
    fallbacks = set()
    for i in range(60):
        image, label, rec = synthesize(i, 5, bank, cfg, "single")
        _check_rule(image, label, rec, cfg, "single")
        assert rec["check"]["floating"] == 0
        fallbacks.add(rec["placement"]["fallback"])
        rec2 = json.loads(json.dumps(rec))
        image2, label2 = replay(rec2, bank, cfg)
        assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()
    # the small heads force fallbacks beyond the drawn position
    assert fallbacks - {"drawn"}


def test_scale_stays_in_the_configured_range_when_shrinking() -> None:
    # a round tumour of radius 10; the only background head has radius 12.5: at scale >= ~0.95
    # its ring (2-4 px outside) leaves the head, so large draws must shrink
    shape = (64, 64)
    tum = ellipse(shape, 32, 32, 10, 10)
    img = np.where(tum, 0.9, np.where(ellipse(shape, 32, 32, 25, 25), 0.4, 0.0)).astype(np.float32)
    bg = np.where(ellipse(shape, 32, 32, 12.5, 12.5), 0.5, 0.0).astype(np.float32)
    bank = SliceBank({SliceRef("a", 1): (img, tum.astype(np.uint8))}, {SliceRef("a", 2): bg},
                     ("background", "tumour"))
    cfg = CONFIG
    lo, hi = cfg.single.object.scale
    shrunk = 0
    for i in range(40):
        image, label, rec = synthesize(i, 1, bank, cfg, "single")
        _check_rule(image, label, rec, cfg, "single")
        for obj in rec["objects"]:
            assert lo - 1e-12 <= obj["params"]["scale"] <= hi + 1e-12
            shrunk += obj["placed"] == "shrunk"
    assert shrunk > 0


def test_no_acceptable_placement_is_an_error_not_a_violation() -> None:
    shape = (64, 64)
    tum = ellipse(shape, 32, 32, 12, 12)
    head = ellipse(shape, 32, 32, 20, 20)
    img = np.where(tum, 0.9, np.where(head, 0.4, 0.0)).astype(np.float32)
    tiny = np.where(ellipse(shape, 10, 10, 2, 2), 0.5, 0.0).astype(np.float32)
    bank = SliceBank({SliceRef("a", 1): (img, tum.astype(np.uint8))}, {SliceRef("a", 2): tiny},
                     ("background", "tumour"))
    cfg = SynthesisConfig.from_json({"single": {"placement": {"max_pairs": 3}}})
    with pytest.raises(DataError, match="anatomy rule"):
        synthesize(0, 0, bank, cfg, "single")


def test_paper_recipe_is_eq_1_3() -> None:
    cfg = load_config(None, "paper")
    for task in ("single", "multi"):
        tc = cfg.task(task)
        assert tc.placement.background_choice == "random"
        assert tc.placement.mix_prob == 0.0
        assert tc.object.max_shift == 0.0 and tc.object.gamma == (1.0, 1.0)
    assert cfg.multi.object.flip_h_prob == 0.0 and cfg.multi.background.flip_h_prob == 0.0
    bank = abdomen_bank()
    for i in range(20):
        image, label, rec = synthesize(i, 3, bank, cfg, "multi")
        _check_rule(image, label, rec, cfg, "multi")
        assert all(o["ref"] == rec["exemplar"] for o in rec["objects"])  # one base exemplar only
        assert all(not o["params"]["flip_h"] for o in rec["objects"])
        assert rec["background"]["choice"] == "random"


def test_unknown_recipe_and_bad_placement_keys() -> None:
    with pytest.raises(ConfigError, match="unknown synthesis recipe"):
        load_config(None, "fancy")
    with pytest.raises(ConfigError, match="background_choice"):
        SynthesisConfig.from_json({"single": {"placement": {"background_choice": "best"}}})
    with pytest.raises(ConfigError, match="max_pairs"):
        SynthesisConfig.from_json({"single": {"placement": {"max_pairs": 0}}})


def test_extended_multi_keeps_organs_on_the_body() -> None:
    bank = abdomen_bank()
    for i in range(20):
        image, label, rec = synthesize(i, 4, bank, CONFIG, "multi")
        _check_rule(image, label, rec, CONFIG, "multi")


def test_content_centre_is_opencv_moments_centroid_exactly() -> None:
    """content_centre (row/column counts) gives the very floats of cv2.moments' centroid, which
    the recorded placements of earlier builds were computed with (replays stay bit-exact)."""
    import cv2

    from synth.synthesis.placement import content_centre

    rng = np.random.default_rng(1)
    for i in range(400):
        h, w = (int(v) for v in rng.integers(8, 260, 2))
        img = (rng.random((h, w)) * rng.random()).astype(np.float32)
        if i % 5 == 0:
            img[:] = 0
        thr = float(rng.random() * 0.5)
        m = cv2.moments((img > thr).view(np.uint8), binaryImage=True)
        want = None if m["m00"] <= 0 else (m["m10"] / m["m00"], m["m01"] / m["m00"])
        assert content_centre(img, thr) == want


def test_drawn_tests_in_one_lookup_equal_each_objects_own_search() -> None:
    """Testing every object's drawn position in one lookup (drawn_tests) changes nothing: each
    object's placement, shares, step and tries are those of its own search."""
    from synth.synthesis.background_choice import anatomy_index
    from synth.synthesis.placement import drawn_tests, search_placement
    from synth.synthesis.sample import render_background
    from synth.synthesis.transforms import sample_params

    rng = np.random.default_rng(7)
    steps = set()
    for i in range(80):
        bank, task = (abdomen_bank(), "multi") if i % 2 else (small_heads_bank(), "single")
        tc = CONFIG.task(task)
        pl = tc.placement
        index = anatomy_index(bank)
        bg_ref = bank.background_refs[i % len(bank.background_refs)]
        src = bank.background(bg_ref)
        image = render_background(src, sample_params(rng, tc.background, src.shape),
                                  ((src.shape[1] - 1) / 2.0, (src.shape[0] - 1) / 2.0))
        objs = []
        for ref in bank.exemplar_refs:
            for cls in (np.flatnonzero(bank.class_counts(ref)[1:]) + 1 if task == "multi" else [None]):
                cls = None if cls is None else int(cls)
                params = sample_params(rng, tc.object, image.shape)
                extra = rng.uniform(-1.0, 1.0, size=(pl.max_tries - 1, 2))
                objs.append((bank.object_info(ref, cls), index.ring(ref, cls), params,
                             bank.exemplar(ref)[0].shape, extra))
        firsts = drawn_tests([o[:4] for o in objs], image, pl, tc.object.max_shift, {})
        for (info, ring, params, src_shape, extra), first in zip(objs, firsts):
            args = (info, ring, params, extra, src_shape, image, pl, tc.object.scale[0], tc.object.max_shift)
            alone = search_placement(*args, {})
            together = search_placement(*args, {}, drawn=first)
            assert together == alone
            steps.add(None if alone is None else alone.step)
    assert {"drawn", "moved"} <= steps and len(steps) >= 3  # the fallbacks were exercised too


def fractions_on(pts, txs, tys, image, n_obj, content, air):
    """The placement test written plainly, one translation at a time, from the rule's statement
    (synth/synthesis/placement.py's docstring): each point moved by (txs[k], tys[k]) and rounded to a pixel;
    off the frame it is off the body; the share of the first ``n_obj`` points (the object) on
    pixels ``> content`` and of the rest (its ring) on pixels ``>= air`` (1.0 without a ring).
    Independent of the module's vectorised lookup (no padded frame, no flat indices)."""
    h, w = image.shape
    n_ring = pts.shape[1] - n_obj
    inside, ring = np.empty(len(txs)), np.empty(len(txs))
    for j, (tx, ty) in enumerate(zip(txs, tys)):
        hits = []
        for x, y in zip(pts[0] + tx, pts[1] + ty):
            x, y = round(float(x)), round(float(y))   # round half to even, as np.rint
            hits.append(float(image[y, x]) if 0 <= x < w and 0 <= y < h else -1.0)
        v = np.array(hits, dtype=np.float64)
        inside[j] = np.count_nonzero(v[:n_obj] > np.float32(content)) / n_obj
        ring[j] = np.count_nonzero(v[n_obj:] >= np.float32(air)) / n_ring if n_ring else 1.0
    return inside, ring


def test_first_acceptable_is_the_first_translation_passing_the_plain_test() -> None:
    """first_acceptable (the ring looked up only where the object passes, one vectorised lookup
    on the padded frame) picks the translation, with the shares, that testing object and ring
    plainly at every translation picks first."""
    from types import SimpleNamespace

    from synth.synthesis.placement import first_acceptable, padded_frame

    rng = np.random.default_rng(5)
    found = 0
    for i in range(300):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        image = np.where(ellipse((h, w), w / 2, h / 2, w / 3, h / 3), rng.random((h, w)), 0.03).astype(np.float32)
        n_obj, n_ring = int(rng.integers(1, 60)), int(rng.integers(0, 60))
        pts = rng.normal(0, 1, (2, n_obj + n_ring)) * [[w / 6], [h / 6]] + [[w / 2], [h / 2]]
        k = int(rng.integers(1, 9))
        txs, tys = rng.normal(0, w / 5, k), rng.normal(0, h / 5, k)
        pl = SimpleNamespace(content_threshold=0.02, air_threshold=0.04, min_inside=float(rng.choice([0.5, 0.9])),
                             min_ring_content=0.6)
        inside, ring = fractions_on(pts, txs, tys, image, n_obj, pl.content_threshold, pl.air_threshold)
        ok = np.flatnonzero((inside >= pl.min_inside) & (ring >= pl.min_ring_content))
        want = (int(ok[0]), float(inside[ok[0]]), float(ring[ok[0]])) if ok.size else None
        assert first_acceptable(pts, txs, tys, padded_frame(image), w, h, n_obj, pl) == want
        found += want is not None
    assert 30 < found < 270  # both outcomes exercised


# The search's order, restated from search_placement's docstring (not imported from the module):
# "moved 5 % .. 100 % of the way towards the content's centre" in these steps.
MOVE_STEPS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def _clamped(v, lo, hi):
    """v clamped to [lo, hi]; unchanged when the range is empty (the box does not fit)."""
    return v if lo > hi else np.clip(v, lo, hi)


def _translation_range(box, w, h, max_shift):
    """Translations keeping the box (x0, y0, x1, y1) inside the pixel frame [-0.5, size - 0.5]
    and within +-max_shift of the frame size: (x low, x high, y low, y high)."""
    x0, y0, x1, y1 = box
    return (max(-max_shift * w, -0.5 - x0), min(max_shift * w, w - 0.5 - x1),
            max(-max_shift * h, -0.5 - y0), min(max_shift * h, h - 0.5 - y1))


def _content_centroid(image, threshold):
    """OpenCV's centroid of the content mask (pixels > threshold), or the frame centre."""
    import cv2

    m = cv2.moments((image > threshold).astype(np.uint8), binaryImage=True)
    h, w = image.shape
    return (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] else ((w - 1) / 2.0, (h - 1) / 2.0)


def _sequential_search(info, points, params, extra, src_shape, image, pl, scale_low, max_shift):
    """The placement search written plainly from search_placement's docstring: group after group
    (drawn, moved, redrawn; then the same at each smaller scale), each translation tested with
    fractions_on; the reference search_placement's answers, shares and tries must equal. Only the
    object's affine (synth.synthesis.transforms, tested there) and the result type come from the code."""
    from synth.synthesis.placement import PlacementResult
    from synth.synthesis.transforms import forward_affine

    h, w = image.shape
    n_obj = len(info.points)
    scales = [params.scale]
    if pl.shrink_steps > 0 and scale_low < params.scale:
        ratio = (scale_low / params.scale) ** (1.0 / pl.shrink_steps)
        scales += [params.scale * ratio ** k for k in range(1, pl.shrink_steps + 1)]
    tries = 0
    for si, s in enumerate(scales):
        p = params if si == 0 else params.replace(scale=float(s))
        fwd = forward_affine(p, info.center, src_shape, (h, w), with_translation=False)
        box = fwd.bbox(info.bbox)
        lx, hx, ly, hy = _translation_range(box, w, h, max_shift)
        fx0, fx1, fy0, fy1 = _translation_range(box, w, h, 1.0)
        pts = np.stack(fwd.apply_xy(points[0], points[1]))
        tx0 = min(max(p.tx, lx), hx) if lx <= hx else p.tx
        ty0 = min(max(p.ty, ly), hy) if ly <= hy else p.ty
        for name in ("drawn", "moved", "redrawn"):
            if name == "drawn":
                txs, tys = np.array([tx0]), np.array([ty0])
            elif name == "moved":
                centre = _content_centroid(image, pl.content_threshold)
                cx, cy = fwd.apply_xy(np.array([info.center[0]]), np.array([info.center[1]]))
                a = np.asarray(MOVE_STEPS)
                txs = _clamped(tx0 + a * (centre[0] - (cx[0] + tx0)), fx0, fx1)
                tys = _clamped(ty0 + a * (centre[1] - (cy[0] + ty0)), fy0, fy1)
            else:
                txs = _clamped(np.concatenate((extra[:, 0] * (max_shift * w), [0.0])), lx, hx)
                tys = _clamped(np.concatenate((extra[:, 1] * (max_shift * h), [0.0])), ly, hy)
            tries += txs.size
            inside, on = fractions_on(pts, txs, tys, image, n_obj, pl.content_threshold, pl.air_threshold)
            good = np.flatnonzero((inside >= pl.min_inside) & (on >= pl.min_ring_content))
            if good.size:
                j = int(good[0])
                return PlacementResult(p.with_translation(float(txs[j]), float(tys[j])), float(inside[j]),
                                       float(on[j]), name if si == 0 else "shrunk", tries)
    return None


def test_search_placement_equals_the_group_by_group_search() -> None:
    """search_placement (rings looked up only where the object passes, the drawn scale's
    geometry reused from drawn_tests) gives the plain group-by-group search's placement, shares,
    step and tries, with and without drawn_tests' result."""
    from synth.synthesis.background_choice import anatomy_index
    from synth.synthesis.placement import drawn_tests, search_placement
    from synth.synthesis.sample import render_background
    from synth.synthesis.transforms import sample_params

    rng = np.random.default_rng(9)
    steps = []
    for i in range(60):
        bank, task = (abdomen_bank(), "multi") if i % 2 else (small_heads_bank(), "single")
        tc = CONFIG.task(task)
        # stricter rules too, so that smaller scales and failures are reached
        pl = dataclasses.replace(tc.placement, min_inside=(0.9, 0.99, 1.0)[i % 3],
                                 min_ring_content=(0.6, 0.95, 1.0)[i % 5 % 3])
        index = anatomy_index(bank)
        src = bank.background(bank.background_refs[i % len(bank.background_refs)])
        image = render_background(src, sample_params(rng, tc.background, src.shape),
                                  ((src.shape[1] - 1) / 2.0, (src.shape[0] - 1) / 2.0))
        if i % 4 == 3:  # little content left: every scale fails for some objects
            image[:, : image.shape[1] * 3 // 4] = 0.0
        for ref in bank.exemplar_refs:
            for cls in ([None] if task == "single" else [int(c) for c in np.flatnonzero(bank.class_counts(ref)[1:]) + 1]):
                info, ring = bank.object_info(ref, cls), index.ring(ref, cls)
                params = sample_params(rng, tc.object, image.shape)
                extra = rng.uniform(-1.0, 1.0, size=(pl.max_tries - 1, 2))
                src_shape = bank.exemplar(ref)[0].shape
                args = (info, ring, params, extra, src_shape, image, pl, tc.object.scale[0], tc.object.max_shift)
                want = _sequential_search(*args)
                assert search_placement(*args, {}) == want
                (first,) = drawn_tests([(info, ring, params, src_shape)], image, pl, tc.object.max_shift, {})
                assert search_placement(*args, {}, drawn=first) == want
                steps.append(None if want is None else want.step)
    assert {"drawn", "moved", "shrunk", None} <= set(steps)


def test_drawn_tests_of_one_object_equal_its_test_among_several() -> None:
    """The one-object path of drawn_tests (the single task's) gives exactly the numbers and
    geometry of the same object tested in a group (the concatenated lookup)."""
    from synth.synthesis.background_choice import anatomy_index
    from synth.synthesis.placement import drawn_tests
    from synth.synthesis.sample import render_background
    from synth.synthesis.transforms import sample_params

    rng = np.random.default_rng(11)
    oks = set()
    for i in range(40):
        bank, task = (abdomen_bank(), "multi") if i % 2 else (small_heads_bank(), "single")
        tc = CONFIG.task(task)
        index = anatomy_index(bank)
        src = bank.background(bank.background_refs[i % len(bank.background_refs)])
        image = render_background(src, sample_params(rng, tc.background, src.shape),
                                  ((src.shape[1] - 1) / 2.0, (src.shape[0] - 1) / 2.0))
        objs = [(bank.object_info(ref, cls), index.ring(ref, cls), sample_params(rng, tc.object, image.shape),
                 bank.exemplar(ref)[0].shape)
                for ref in bank.exemplar_refs
                for cls in ([None] if task == "single" else [int(c) for c in np.flatnonzero(bank.class_counts(ref)[1:]) + 1])]
        together = drawn_tests(objs, image, tc.placement, tc.object.max_shift, {})
        for obj, first in zip(objs, together):
            (alone,) = drawn_tests([obj], image, tc.placement, tc.object.max_shift, {})
            assert alone == first
            for a, b in ((alone.geometry.px, first.geometry.px), (alone.geometry.py, first.geometry.py)):
                assert np.array_equal(a, b)
            assert (alone.geometry.fwd, alone.geometry.box) == (first.geometry.fwd, first.geometry.box)
            oks.add(alone.ok)
    assert oks == {True, False}
