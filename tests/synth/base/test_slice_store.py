"""synth/base/slice_store.py: exact compact background storage."""
from __future__ import annotations

import numpy as np
import pytest

from shared.intensity import SLICE_MINMAX, ExactSliceMinMax, apply_intensity
from synth.base.slice_store import BackgroundInfo, BackgroundStore, encode_minmax_slice, encode_slice
from synth.selection.rules import content_fraction, content_fraction_exact
from synth.synthesis.bank import SliceBank, SliceRef


def test_encode_slice_is_exact_and_compact():
    rng = np.random.default_rng(0)
    raw = rng.integers(-200, 3000, size=(3, 64, 48)).astype(np.int16)
    raw[1, :, :10] = 0
    slices = apply_intensity(raw, {"kind": "minmax", "per": "slice"})
    ct = apply_intensity(raw, {"kind": "clip", "low": -125.0, "high": 275.0})
    for image, dtype in ((slices[0], np.uint16), (slices[1], np.uint16), (ct[2], np.uint16),
                         (np.zeros((5, 5), np.float32), np.uint8),
                         (rng.random((16, 16), dtype=np.float32), np.float32)):
        enc = encode_slice(image)
        assert enc.data.dtype == dtype
        assert np.array_equal(enc.decode().view(np.uint32), image.view(np.uint32))
    few = apply_intensity(rng.integers(0, 50, size=(1, 20, 20)), {"kind": "minmax", "per": "slice"})[0]
    assert encode_slice(few).data.dtype == np.uint8


def _integer_volumes(rng):
    """Integer scans that exercise every branch of encode_slice's scale search: wide int16 ranges,
    offsets sharing a factor (3, 2), two levels, sparse bright voxels, full uint16, constant slices."""
    shape = (3, 40, 50)
    yield rng.integers(-32768, 32767, size=shape, dtype=np.int16)
    yield (rng.integers(0, 300, size=shape) * 3).astype(np.int16)
    yield (rng.integers(0, 40, size=shape) * 2 + 7).astype(np.int16)
    yield rng.integers(0, 2, size=shape).astype(np.uint8)
    yield np.where(rng.random(shape) < 0.7, 0, rng.integers(100, 5000, size=shape)).astype(np.int16)
    yield rng.integers(0, 65535, size=shape, dtype=np.uint16)
    const = np.full(shape, 5, np.int16)
    const[1, :3, :3] = 9
    yield const
    yield (rng.integers(0, 6, size=shape) * int(rng.integers(2, 9))).astype(np.int16)


def test_integer_minmax_shortcuts_equal_the_float_path():
    """The streaming scan's integer shortcut (per-slice min-max of an integer scan) gives exactly
    the float32 path's slices, content fractions and encodings (dtype, data and scale)."""
    rng = np.random.default_rng(0)
    encoded = 0
    for _ in range(25):
        for raw in _integer_volumes(rng):
            mm = ExactSliceMinMax.of(raw, SLICE_MINMAX)
            img = apply_intensity(raw, SLICE_MINMAX)
            assert np.array_equal(content_fraction_exact(mm), content_fraction(img))
            for k in range(raw.shape[0]):
                assert np.array_equal(mm.image(k).view(np.uint32), img[k].view(np.uint32))
                if mm.span[k]:
                    a, b = encode_minmax_slice(mm, k), encode_slice(img[k])
                    assert (a.data.dtype, a.scale) == (b.data.dtype, b.scale) and np.array_equal(a.data, b.data)
                    encoded += 1
    assert encoded > 500
    # the content level (float32 0.02) at every span up to 3000 and at random larger ones
    for span in [*range(1, 3000), *rng.integers(3000, 65536, 500)]:
        raw = np.arange(int(span) + 1, dtype=np.int32).reshape(1, 1, -1)
        mm = ExactSliceMinMax.of(raw, SLICE_MINMAX)
        assert np.array_equal(content_fraction_exact(mm), content_fraction(apply_intensity(raw, SLICE_MINMAX)))
    # only the plain per-slice min-max of integers takes the shortcut
    assert ExactSliceMinMax.of(raw.astype(np.float32), SLICE_MINMAX) is None
    assert ExactSliceMinMax.of(raw, {"kind": "minmax", "per": "volume"}) is None
    assert ExactSliceMinMax.of(raw, {"kind": "minmax", "per": "slice", "upper_percentile": 99.5}) is None
    assert ExactSliceMinMax.of(np.array([[[0, 1 << 25]]], np.int32), SLICE_MINMAX) is None


def test_store_in_bank_decodes_on_access():
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 1000, size=(2, 32, 32)).astype(np.int16)
    images = apply_intensity(raw, {"kind": "minmax", "per": "slice"})
    store = BackgroundStore()
    for k in range(2):
        store.add(SliceRef("a", k), images[k], BackgroundInfo(k, 2, 0.5, 512))
    label = np.zeros((32, 32), np.uint8)
    label[10:14, 10:14] = 1
    bank = SliceBank({SliceRef("a", 0): (images[0], label)}, store, ("background", "tumour"))
    assert bank.background_refs == [SliceRef("a", 0), SliceRef("a", 1)]
    assert np.array_equal(bank.background(SliceRef("a", 1)), images[1])
    assert bank.background_info[SliceRef("a", 1)].position == 1.0
    assert store.nbytes == 2 * 32 * 32 * 2 and store.dtypes() == {"uint16": 2}


def test_cropped_slices_hold_the_same_bytes():
    from synth.base.slice_store import CroppedSlice, EncodedSlice

    rng = np.random.default_rng(5)
    head = np.zeros((30, 40), np.uint16)
    head[7:21, 12:33] = rng.integers(0, 3000, (14, 21))  # zeros inside the box stay inside it
    floats = np.zeros((30, 40), np.float32)
    floats[3, 5], floats[20, 30] = -0.0, 0.25  # a negative zero is not a zero byte: kept in the box
    for enc, box in ((EncodedSlice(head, 2999.0), (14, 21)), (EncodedSlice(head.astype(np.uint8), 255.0), (14, 21)),
                     (EncodedSlice(floats, 0.0), (18, 26)), (EncodedSlice(np.zeros((30, 40), np.uint8), 1.0), (0, 0))):
        cropped = CroppedSlice.of(enc)
        assert cropped.data.shape == box
        whole = np.zeros(cropped.shape, dtype=cropped.data.dtype)  # the box put back into a zero slice
        r0, c0 = cropped.top_left
        whole[r0:r0 + box[0], c0:c0 + box[1]] = cropped.data
        assert cropped.data.dtype == enc.data.dtype and cropped.scale == enc.scale
        assert np.array_equal(whole.view(np.uint8), enc.data.view(np.uint8))


def test_cropped_slices_decode_and_mask_as_the_whole_slice():
    """The store keeps slices cropped: decode() and above(t) give the uncropped slice's bits, for
    every dtype, thresholds below zero (the zeros outside the box are above them), an empty box
    and a float32 -0.0 (kept inside the box)."""
    from synth.base.slice_store import CroppedSlice, EncodedSlice

    rng = np.random.default_rng(12)
    head = np.zeros((30, 40), np.uint16)
    head[7:21, 12:33] = rng.integers(0, 3000, (14, 21))
    floats = np.zeros((30, 40), np.float32)
    floats[3, 5], floats[20, 30], floats[9, 9] = -0.0, 0.25, 0.5
    for enc in (EncodedSlice(head, 2999.0, int(head.max())), EncodedSlice((head % 256).astype(np.uint8), 255.0),
                EncodedSlice(floats, 0.0), EncodedSlice(np.zeros((30, 40), np.uint8), 1.0, 0)):
        cropped = CroppedSlice.of(enc)
        assert cropped.shape == (30, 40) and cropped.nbytes == cropped.data.nbytes
        assert cropped.decode().dtype == np.float32
        assert np.array_equal(cropped.decode().view(np.uint32), enc.decode().view(np.uint32))
        for thr in (-0.5, -0.0, 0.0, 0.001, 0.3, np.float32(0.3), np.float64(0.3), 1.0):
            assert np.array_equal(cropped.above(thr), enc.above(thr)), thr
        assert cropped.in_unit_range == enc.in_unit_range or cropped.data.size == 0
    store = BackgroundStore()
    store.add("a", EncodedSlice(head, 2999.0))
    store.add("b", floats)
    assert store.shape("a") == store.shape("b") == (30, 40)
    assert store.nbytes == 14 * 21 * 2 + 18 * 26 * 4  # the boxes only
    assert np.array_equal(store["a"], EncodedSlice(head, 2999.0).decode())


def test_levels_within_the_scale_skip_the_banks_range_check():
    """A slice stored as integer levels <= scale decodes into [0, 1]: the bank does not decode it to
    check it; anything else is still checked (and a bad one refused)."""
    from shared.errors import DataError
    from synth.base.slice_store import EncodedSlice

    ok = EncodedSlice(np.array([[0, 7], [300, 300]], np.uint16), 300.0)
    over = EncodedSlice(np.array([[0, 7], [301, 300]], np.uint16), 300.0)
    assert ok.in_unit_range and not over.in_unit_range
    assert not EncodedSlice(np.zeros((2, 2), np.uint8), 0.0).in_unit_range  # 0 / 0 would be NaN
    assert not EncodedSlice(np.full((2, 2), 0.5, np.float32), 0.0).in_unit_range
    assert np.all((ok.decode() >= 0) & (ok.decode() <= 1))
    checked = []
    store = BackgroundStore()
    store.add("a", ok)
    store.add("b", encode_slice(np.array([[0.0, 0.3], [0.7, 1.0]], np.float32)))  # uint8 levels: skipped too
    store.add("c", EncodedSlice(np.array([[0.0, 0.3], [0.7, 1.0]], np.float32), 0.0))  # float32: checked
    store.validate(lambda ref, img: checked.append(ref) or img)
    assert checked == ["c"]
    bad = BackgroundStore()
    bad.add(SliceRef("v", 1), over)
    with pytest.raises(DataError, match=r"background .*values must be finite and in \[0, 1\]"):
        SliceBank(exemplars={SliceRef("v", 0): (np.zeros((4, 4), np.float32), np.ones((4, 4), np.uint8))},
                  backgrounds=bad, class_names=("background", "tumour"))


def test_above_equals_comparing_the_decoded_slice():
    """EncodedSlice.above(t) is decode() > t without the decode: every scale, dtype and threshold
    kind, and thresholds exactly on a level's value."""
    from synth.base.slice_store import EncodedSlice

    rng = np.random.default_rng(11)
    for trial in range(400):
        scale = int(rng.integers(1, 65536))
        dtype = np.uint8 if scale <= 255 and trial % 2 else np.uint16
        top = min(scale, np.iinfo(dtype).max)
        enc = EncodedSlice(rng.integers(0, top + 1, (9, 7)).astype(dtype), float(scale))
        on_levels = [float(np.float32(L) / np.float32(scale)) for L in (0, 1, scale // 2, scale - 1, top)]
        for thr in (0.0, 0.02, float(rng.random()), 1.0, -0.5, np.float32(0.02), np.float64(0.3), *on_levels):
            assert np.array_equal(enc.above(thr), enc.decode() > thr), (scale, thr)
    floats = EncodedSlice(np.array([[0.0, 0.5], [0.01, 1.0]], np.float32), 0.0)
    assert floats.above(0.02).tolist() == [[False, True], [False, True]]


def test_minmax_offsets_equal_the_wide_subtraction_for_every_integer_dtype():
    rng = np.random.default_rng(9)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32):
        info = np.iinfo(dtype)
        low, high = max(int(info.min), -(1 << 24) + 1), min(int(info.max), (1 << 24) - 65536)  # exact in float32
        for _ in range(30):
            lo = int(rng.integers(low, high))
            hi = min(int(info.max), lo + int(rng.integers(1, 65536)))
            raw = rng.integers(lo, hi, (3, 9, 7), endpoint=True).astype(dtype)
            minmax = ExactSliceMinMax.of(raw, SLICE_MINMAX)
            for k in range(3):
                want = (raw[k].astype(np.int64) - int(raw[k].min())).astype(np.uint16)
                got = minmax.offsets(k)
                assert got.dtype == np.uint16 and np.array_equal(got, want), (dtype, lo, hi)


def test_float_minmax_counts_equal_the_float32_preset():
    """Bisection over float32 values gives the float32 path's counts: negatives near zero, tiny
    values, constant slices, spans that overflow, signed zeros."""
    from shared.intensity import float_minmax_counts_above

    rng = np.random.default_rng(3)
    for trial in range(120):
        kind = trial % 6
        if kind == 0:
            raw = rng.normal(0, 1, (6, 9, 11)).astype(np.float32)
        elif kind == 1:
            raw = (rng.normal(0, 1, (6, 9, 11)) * 1e-30).astype(np.float32)
        elif kind == 2:
            raw = (rng.normal(0, 1, (6, 9, 11)) - 0.1).astype(np.float32)
            raw[:, 0, 0], raw[:, 0, 1] = -0.15, 0.0
        elif kind == 3:
            raw = rng.integers(-5, 5, (6, 9, 11)).astype(np.float32)
            raw[1] = 3.0  # a constant slice
        elif kind == 4:
            raw = (rng.random((6, 9, 11)) * 1e30).astype(np.float32)
            raw[2, 1, 1], raw[2, 1, 2] = -3e38, 3e38  # max - min overflows to inf
        else:
            raw = np.where(rng.random((6, 9, 11)) < 0.5, np.float32(-0.0), np.float32(0.0))
            raw[3, 2, 2] = 1e-45
        for level in (0.02, 0.5, 0.999, float(rng.random())):
            with np.errstate(all="ignore"):
                want = (apply_intensity(raw, SLICE_MINMAX) > np.float32(level)).reshape(6, -1).sum(axis=1)
                got = float_minmax_counts_above(raw, level)
            assert np.array_equal(got, want), (kind, level)
    assert float_minmax_counts_above(np.zeros((2, 3, 3), np.int16), 0.02) is None
