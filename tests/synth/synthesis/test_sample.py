"""Synthesis engine (synth/synthesis/sample.py): replay, determinism, labels, placement, config."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from shared.errors import ConfigError, DataError
from synth.synthesis.bank import SliceBank, SliceRef
from synth.synthesis.sample import render_background, replay, synthesize
from synth.synthesis.config import SynthesisConfig, load_config
from synthkit import abdomen_bank, brain_bank, brats_real_bank, synapse_real_bank

CONFIG = load_config()


@pytest.fixture(scope="module")
def brain() -> SliceBank:
    return brain_bank()


@pytest.fixture(scope="module")
def abdomen() -> SliceBank:
    return abdomen_bank()


def _roundtrip(record: dict) -> dict:
    return json.loads(json.dumps(record))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _check_sample(image: np.ndarray, label: np.ndarray, bank: SliceBank) -> None:
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(label).tolist()) <= set(range(len(bank.class_names)))


# --- replay and determinism --------------------------------------------------------------------

@pytest.mark.parametrize("task", ["single", "multi"])
def test_replay_is_bit_identical_after_json(task: str, brain: SliceBank, abdomen: SliceBank) -> None:
    bank = brain if task == "single" else abdomen
    for i in range(25):
        image, label, record = synthesize(i, 7, bank, CONFIG, task)
        _check_sample(image, label, bank)
        rec = _roundtrip(record)
        assert rec == record  # every recorded float survives JSON exactly
        image2, label2 = replay(rec, bank, CONFIG)
        assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()


def test_sample_depends_only_on_seed_and_index(brain: SliceBank) -> None:
    fresh = brain_bank()  # new bank: no caches warmed by earlier samples
    alone = synthesize(5, 3, fresh, CONFIG, "single")
    for i in range(5):
        synthesize(i, 3, brain, CONFIG, "single")
    after = synthesize(5, 3, brain, CONFIG, "single")
    assert alone[0].tobytes() == after[0].tobytes() and alone[1].tobytes() == after[1].tobytes()
    assert alone[2] == after[2]
    other_seed = synthesize(5, 4, brain, CONFIG, "single")
    assert other_seed[0].tobytes() != alone[0].tobytes()
    assert alone[2]["seed"] == [3, 5]


@pytest.mark.parametrize("task", ["single", "multi"])
def test_result_independent_of_opencv_threads(task: str, brain: SliceBank, abdomen: SliceBank) -> None:
    """Under the build's pin (synth.base.parallel.opencv_single_threaded, what build and verify run
    in) the bytes do not depend on the caller's OpenCV setting. Unpinned, OpenCV's kernels may
    differ in the last bit between thread counts on some CPUs, so only closeness is asserted."""
    from synth.base.parallel import opencv_single_threaded

    bank = brain if task == "single" else abdomen
    before = cv2.getNumThreads()
    pinned, free = [], []
    try:
        for n in (1, 4):
            cv2.setNumThreads(n)
            with opencv_single_threaded():
                pinned.append([synthesize(i, 0, bank, CONFIG, task)[:2] for i in range(8)])
            assert cv2.getNumThreads() == n
            free.append([synthesize(i, 0, bank, CONFIG, task)[:2] for i in range(8)])
    finally:
        cv2.setNumThreads(before)
    for (a, b), (c, d) in zip(*pinned):
        assert a.tobytes() == c.tobytes() and b.tobytes() == d.tobytes()
    for (a, b), (c, d) in zip(*free):
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
        assert np.mean(b != d) < 1e-3


# --- geometry and content ----------------------------------------------------------------------

def test_parameters_within_config_ranges(brain: SliceBank, abdomen: SliceBank) -> None:
    def check(p: dict, r, shape) -> None:
        assert r.scale[0] <= p["scale"] <= r.scale[1]
        assert r.rotation[0] <= p["rotation"] <= r.rotation[1]
        assert r.gain[0] <= p["gain"] <= r.gain[1] and r.gamma[0] <= p["gamma"] <= r.gamma[1]
        assert r.shift[0] <= p["shift"] <= r.shift[1]
        assert p["blur_sigma"] == 0.0 or r.blur_sigma[0] <= p["blur_sigma"] <= r.blur_sigma[1]
        assert abs(p["tx"]) <= r.max_shift * shape[1] + 1e-9 and abs(p["ty"]) <= r.max_shift * shape[0] + 1e-9
        assert isinstance(p["flip_h"], bool) and isinstance(p["flip_v"], bool)
        if r.flip_h_prob == 0:
            assert not p["flip_h"]

    for task, bank in (("single", brain), ("multi", abdomen)):
        tc = CONFIG.task(task)
        flips = 0
        for i in range(40):
            _, _, rec = synthesize(i, 1, bank, CONFIG, task)
            check(rec["background"]["params"], tc.background, rec["shape"])
            for obj in rec["objects"]:
                check(obj["params"], tc.object, rec["shape"])
                flips += obj["params"]["flip_h"]
        if task == "single":
            assert 5 < flips < 35  # flip_h_prob 0.5 actually flips about half


def test_tumour_stays_near_its_exemplar_position(brain: SliceBank) -> None:
    r = CONFIG.single.object
    for i in range(30):
        _, label, rec = synthesize(i, 2, brain, CONFIG, "single")
        (obj,) = rec["objects"]
        ex_img, ex_lab = brain.exemplar(SliceRef.from_json(obj["ref"]))
        assert label.any()
        h, w = label.shape
        bound = np.array([r.max_shift * w, r.max_shift * h]) + 1.5
        assert (np.abs(_centroid(label > 0) - np.array(obj["center"])) <= bound).all()
        # ... and overlaps the exemplar tumour's neighbourhood (dilated by the shift bound).
        k = int(np.ceil(r.max_shift * max(h, w))) * 2 + 1
        near = cv2.dilate(ex_lab, np.ones((k, k), np.uint8)) > 0
        assert (near & (label > 0)).any()
        assert obj["classes"] == [1]


def test_tumour_lands_inside_the_background_head(brain: SliceBank) -> None:
    inside = []
    for i in range(30):
        image, label, rec = synthesize(i, 3, brain, CONFIG, "single")
        inside.append(rec["objects"][0]["inside"])
        head = cv2.dilate((image > 0.02).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert (head[label > 0]).mean() >= 0.8
    assert np.median(inside) >= CONFIG.single.placement.min_inside


def test_organs_stay_near_their_exemplar_positions(abdomen: SliceBank) -> None:
    """Bound (docs/synthesis.md): |centroid shift| <= max_shift * size + 1.5 px per axis."""
    r = CONFIG.multi.object
    for i in range(20):
        _, label, rec = synthesize(i, 4, abdomen, CONFIG, "multi")
        h, w = label.shape
        bound = np.array([r.max_shift * w, r.max_shift * h]) + 1.5
        assert len(rec["objects"]) == 8
        for obj in rec["objects"]:
            k = obj["class"]
            assert obj["classes"] == [k]
            ref = SliceRef.from_json(obj["ref"])
            assert ref in abdomen.exemplar_refs
            ex_centroid = _centroid(abdomen.exemplar(ref)[1] == k)
            assert np.allclose(ex_centroid, obj["center"])
            assert (np.abs(_centroid(label == k) - ex_centroid) <= bound).all(), (i, k)


def test_multi_paste_order_largest_first(abdomen: SliceBank) -> None:
    _, _, rec = synthesize(0, 0, abdomen, CONFIG, "multi")
    pixels = [o["pixels"] for o in rec["objects"]]
    assert pixels == sorted(pixels, reverse=True)


def test_multi_uses_organs_of_the_base_exemplar_and_mixes_sources() -> None:
    bank = abdomen_bank(n_ex=4, drop={0: (4,), 1: (4, 8), 2: (), 3: ()})
    cfg0 = SynthesisConfig.from_json({"multi": {"placement": {"mix_prob": 0.0}}})
    cfg1 = SynthesisConfig.from_json({"multi": {"placement": {"mix_prob": 1.0}}})
    mixed = 0
    for i in range(20):
        _, label, rec = synthesize(i, 0, bank, cfg0, "multi")
        base = SliceRef.from_json(rec["exemplar"])
        present = {k for k in range(1, 9) if bank.class_counts(base)[k] > 0}
        assert {o["class"] for o in rec["objects"]} == present
        assert all(o["ref"] == rec["exemplar"] for o in rec["objects"])
        _, _, rec1 = synthesize(i, 0, bank, cfg1, "multi")
        mixed += sum(o["ref"] != rec1["exemplar"] for o in rec1["objects"])
        for o in rec1["objects"]:  # a mixed-in exemplar must contain the organ
            assert bank.class_counts(SliceRef.from_json(o["ref"]))[o["class"]] > 0
    assert mixed > 20


def test_exemplar_and_background_of_different_shapes() -> None:
    bank = abdomen_bank(shape=(101, 122), bg_shapes=((128, 128), (96, 160)))
    r = CONFIG.multi.object
    for i in range(10):
        image, label, rec = synthesize(i, 0, bank, CONFIG, "multi")
        bg = bank.background(SliceRef.from_json(rec["background"]["ref"]))
        assert image.shape == label.shape == bg.shape == tuple(rec["shape"])
        _check_sample(image, label, bank)
        h, w = label.shape
        d = np.array([w / 122, h / 101])
        for obj in rec["objects"]:  # organs land at the same relative position
            expected = (np.array(obj["center"]) + 0.5) * d - 0.5
            assert (np.abs(_centroid(label == obj["class"]) - expected) <= np.array([r.max_shift * w, r.max_shift * h]) + 2).all()
        image2, label2 = replay(_roundtrip(rec), bank, CONFIG)
        assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()


def test_exemplar_without_foreground_is_never_drawn() -> None:
    bank = brain_bank(n_ex=3)
    empty = SliceRef("empty", 0)
    ex = {empty: (np.zeros((96, 96), np.float32), np.zeros((96, 96), np.uint8))}
    ex.update({r: bank.exemplar(r) for r in bank.exemplar_refs})
    bank2 = SliceBank(ex, {r: bank.background(r) for r in bank.background_refs}, bank.class_names)
    assert empty not in bank2.exemplars_with(None)
    for i in range(15):
        _, label, rec = synthesize(i, 0, bank2, CONFIG, "single")
        assert rec["exemplar"] != empty.to_json() and label.any()
    only_empty = SliceBank({empty: ex[empty]}, {SliceRef("b", 0): np.zeros((96, 96), np.float32)}, bank.class_names)
    with pytest.raises(DataError, match="no exemplar slice has an object"):
        synthesize(0, 0, only_empty, CONFIG, "single")


# --- bad input ------------------------------------------------------------------------------------

def test_bank_rejects_bad_slices() -> None:
    img, lab = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8)
    names = ("background", "tumour")
    with pytest.raises(DataError, match="empty background pool"):
        SliceBank({SliceRef("a", 0): (img, lab)}, {}, names)
    bad = lab.copy()
    bad[0, 0] = 3
    with pytest.raises(DataError, match="outside the class set"):
        SliceBank({SliceRef("a", 0): (img, bad)}, {SliceRef("b", 0): img}, names)
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        SliceBank({SliceRef("a", 0): (img + 2, lab)}, {SliceRef("b", 0): img}, names)
    with pytest.raises(DataError, match="uint8"):
        SliceBank({SliceRef("a", 0): (img, lab.astype(np.int32))}, {SliceRef("b", 0): img}, names)


def test_replay_with_a_missing_slice_or_bad_record(brain: SliceBank) -> None:
    _, _, rec = synthesize(0, 0, brain, CONFIG, "single")
    rec = _roundtrip(rec)
    rec["background"]["ref"]["volume"] = "nope"
    with pytest.raises(DataError, match="not in the background pool"):
        replay(rec, brain, CONFIG)
    with pytest.raises(DataError, match="malformed"):
        replay({"version": 1, "task": "single", "seed": [0, 0]}, brain, CONFIG)
    with pytest.raises(ConfigError, match="unknown synthesis task"):
        synthesize(0, 0, brain, CONFIG, "pairs")


# --- config ---------------------------------------------------------------------------------------

def test_config_file_round_trip(tmp_path) -> None:
    path = tmp_path / "synthesis.json"
    path.write_text(json.dumps(CONFIG.to_json()))
    assert load_config(path) == CONFIG
    path.write_text(json.dumps({"single": {"object": {"scale": [0.9, 1.1]}, "placement": {"feather": False}}}))
    cfg = load_config(path)
    assert cfg.single.object.scale == (0.9, 1.1) and cfg.single.placement.feather is False
    assert cfg.single.object.rotation == CONFIG.single.object.rotation and cfg.multi == CONFIG.multi
    assert SynthesisConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"single": {"object": {"scael": [1, 2]}}}', "unknown key 'single.object.scael'"),
    ('{"single": {"object": {"scale": [1.2, 0.8]}}}', "single.object.scale low 1.2 is above high 0.8"),
    ('{"multi": {"background": {"flip_h_prob": 1.5}}}', "multi.background.flip_h_prob must be in"),
    ('{"single": {"object": {"gain": "big"}}}', "single.object.gain must be a [low, high] pair"),
    ('{"single": {"placement": {"max_tries": 0}}}', "max_tries must be an integer >= 1"),
    ('{"version": 2}', "unsupported synthesis config version"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_config_file_is_one_line_config_error(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and message in text


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")


# --- real sample data -----------------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_brats_replay_threads_and_placement(brats_root) -> None:
    """Replay is bit-exact on one machine and library build with OpenCV on one thread (as the
    build and `synth verify --replay` run it); OpenCV's own threads change at most the last bits."""
    from synth.base.parallel import opencv_single_threaded

    bank = brats_real_bank(brats_root)
    before = cv2.getNumThreads()
    inside = []
    try:
        for i in range(20):
            with opencv_single_threaded():
                image, label, rec = synthesize(i, 11, bank, CONFIG, "single")
                image2, label2 = replay(_roundtrip(rec), bank, CONFIG)
            assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()
            cv2.setNumThreads(max(2, before))
            image_mt, label_mt, _ = synthesize(i, 11, bank, CONFIG, "single")
            cv2.setNumThreads(before)
            np.testing.assert_allclose(image_mt, image, rtol=0, atol=1e-5)
            assert np.mean(label_mt != label) < 1e-3
            _check_sample(image, label, bank)
            inside.append(rec["objects"][0]["inside"])
    finally:
        cv2.setNumThreads(before)
    assert np.median(inside) >= 0.9  # tumours land on brain tissue of the background


@pytest.mark.shared_data
def test_real_synapse_organs_near_their_positions(synapse_root) -> None:
    bank = synapse_real_bank(synapse_root)
    r = CONFIG.multi.object
    cfg = SynthesisConfig.from_json({"multi": {"placement": {"mix_prob": 0.0}}})
    checked = 0
    for i in range(10):
        image, label, rec = synthesize(i, 0, bank, cfg, "multi")
        _check_sample(image, label, bank)
        image2, label2 = replay(_roundtrip(rec), bank, cfg)
        assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()
        h, w = label.shape
        for obj in rec["objects"]:
            visible = label == obj["class"]
            if visible.sum() < 0.8 * obj["pixels"]:
                continue  # mostly overwritten by a smaller organ pasted later
            assert obj["inside"] >= cfg.multi.placement.min_inside
            if obj["placed"] not in ("drawn", "redrawn"):
                continue  # moved towards the body by the anatomy rule (synth/synthesis/placement.py)
            bound = np.array([r.max_shift * w, r.max_shift * h]) + 3.0
            assert (np.abs(_centroid(visible) - np.array(obj["center"])) <= bound).all()
            checked += 1
    assert checked >= 20


def test_naive_baseline_draws_the_same_samples(tmp_path) -> None:
    """bench/naive_synthesis.py (scipy.ndimage, whole frames) agrees with the OpenCV path: an
    independent check of the affine conventions, frame resampling included."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "bench" / "naive_synthesis.py"
    spec = importlib.util.spec_from_file_location("naive_synthesis", path)
    naive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(naive)
    for task, bank in (("single", brain_bank()), ("multi", abdomen_bank(bg_shapes=((128, 128), (90, 140))))):
        for i in range(4):
            a, la, ra = synthesize(i, 0, bank, CONFIG, task)
            b, lb, rb = naive.naive_synthesize(i, 0, bank, CONFIG, task)
            assert ra == rb
            assert np.abs(a - b).max() < 1e-3 and (la == lb).mean() > 0.999
    stats = naive.build_naive(brain_bank(), CONFIG, "single", 3, 0, tmp_path)
    assert stats["samples"] == 3 and len(list(tmp_path.glob("*.npz"))) == 3
    with np.load(tmp_path / "sample_000001.npz") as z:
        assert z["image"].dtype == np.float16 and json.loads(str(z["record"]))["seed"] == [0, 1]


def test_background_intensity_window_matches_full_frame(brain: SliceBank) -> None:
    """T' applies gamma/gain only inside the (transformed) nonzero box of the background: the
    same bytes as applying it to the whole frame."""
    from synth.synthesis.transforms import TransformParams

    ref = brain.background_refs[0]
    src = brain.background(ref)
    nonzero = brain.content_bbox(ref, 0.0)
    c = ((src.shape[1] - 1) / 2, (src.shape[0] - 1) / 2)
    for p in (TransformParams(scale=1.05, rotation=9.0, tx=3.0, gain=1.1, gamma=0.8),
              TransformParams(scale=0.95, rotation=-4.0, flip_h=True, blur_sigma=0.9, gain=0.9, gamma=1.2),
              TransformParams(scale=3.0, rotation=45.0, gamma=0.7)):
        assert render_background(src, p, c, nonzero).tobytes() == render_background(src, p, c, None).tobytes()
