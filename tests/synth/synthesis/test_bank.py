"""synth/synthesis/bank.py: make_bank, the one way a build and a replay assemble the slice bank."""
from __future__ import annotations

import numpy as np
import pytest

from shared.errors import DataError
from synth.synthesis.bank import SliceBank, SliceRef, make_bank
from synth.base.slice_store import BackgroundInfo, encode_slice
from synth.synthesis.sample import replay, synthesize
from synth.synthesis.config import load_config
from synth.audit.verify import replay_bank
from synthkit import brain_bank

CONFIG = load_config()


def _arrays(bank: SliceBank) -> tuple[dict, dict]:
    exemplars = {(r.volume, r.slice): bank.exemplar(r) for r in bank.exemplar_refs}
    backgrounds = {(r.volume, r.slice): bank.background(r) for r in bank.background_refs}
    return exemplars, backgrounds


def test_make_bank_keeps_order_values_and_background_facts() -> None:
    exemplars, backgrounds = _arrays(brain_bank())
    ex_order = list(exemplars)[::-1]  # the order given is the order kept (random draws index into it)
    bg_order = list(backgrounds)[::-1]
    info = {bg_order[0]: BackgroundInfo(bg_order[0][1], 40, 0.5, 1234)}
    bank = make_bank({r: exemplars[r] for r in ex_order}, {r: backgrounds[r] for r in bg_order},
                     ("background", "tumour"), info)
    assert bank.exemplar_refs == [SliceRef(v, k) for v, k in ex_order]
    assert bank.background_refs == [SliceRef(v, k) for v, k in bg_order]
    for (v, k), image in backgrounds.items():
        assert bank.background(SliceRef(v, k)).tobytes() == image.tobytes()  # stored exactly
    for (v, k), (image, label) in exemplars.items():
        got_image, got_label = bank.exemplar(SliceRef(v, k))
        assert got_image.tobytes() == image.tobytes() and np.array_equal(got_label, label)
    assert bank.background_info == {SliceRef(*bg_order[0]): info[bg_order[0]]}
    storage = bank.background_storage()
    assert storage["slices"] == len(backgrounds) and sum(storage["dtypes"].values()) == len(backgrounds)
    assert storage["bytes"] <= sum(b.nbytes for b in backgrounds.values())


def test_make_bank_takes_encoded_backgrounds_and_checks_input() -> None:
    exemplars, backgrounds = _arrays(brain_bank())
    encoded = {ref: encode_slice(image) for ref, image in backgrounds.items()}
    from_images = make_bank(exemplars, backgrounds, ("background", "tumour"))
    from_encoded = make_bank(exemplars, encoded, ("background", "tumour"))
    for i in range(6):
        a = synthesize(i, 1, from_images, CONFIG, "single")
        b = synthesize(i, 1, from_encoded, CONFIG, "single")
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]
    with pytest.raises(DataError, match="empty background pool"):
        make_bank(exemplars, {}, ("background", "tumour"))
    bad = {**exemplars, ("v", 1): (np.full((8, 8), 2.0, np.float32), np.zeros((8, 8), np.uint8))}
    with pytest.raises(DataError, match=r"exemplar v\[1\]: image values must be finite and in \[0, 1\]"):
        make_bank(bad, backgrounds, ("background", "tumour"))


def test_replay_bank_regenerates_built_samples_bit_for_bit() -> None:
    """synth verify --replay assembles its bank with make_bank from the slices the records name:
    the samples come out as the build made them."""
    exemplars, backgrounds = _arrays(brain_bank())
    build_bank = make_bank(exemplars, backgrounds, ("background", "tumour"))
    samples = [synthesize(i, 5, build_bank, CONFIG, "single") for i in range(8)]
    records = [{"synthesis": rec} for _, _, rec in samples]
    slices = {**{ref: (img, np.zeros(img.shape, np.uint8)) for ref, img in backgrounds.items()}, **exemplars}
    bank = replay_bank(records, slices, ("background", "tumour"))
    used_bg = {(r["synthesis"]["background"]["ref"]["volume"], r["synthesis"]["background"]["ref"]["slice"])
               for r in records}
    assert {(r.volume, r.slice) for r in bank.background_refs} == used_bg  # only what the records use
    for image, label, rec in samples:
        image2, label2 = replay(rec, bank, CONFIG)
        assert image2.tobytes() == image.tobytes() and label2.tobytes() == label.tobytes()


def test_content_masks_are_cached_as_bits_with_the_same_answers() -> None:
    """Content masks are kept packed (1/8 of the memory); the mask, area, box and coverage they
    give are those of the plain ``image > threshold`` mask."""
    bank = brain_bank()
    for thr in (0.0, 0.1):
        for ref in bank.background_refs:
            plain = bank.background(ref) > thr
            assert np.array_equal(bank.content_mask(ref, thr), plain)
            assert bank.content_area(ref, thr) == int(np.count_nonzero(plain))
            rows, cols = np.flatnonzero(plain.any(axis=1)), np.flatnonzero(plain.any(axis=0))
            assert bank.content_bbox(ref, thr) == (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))
            for ex in bank.exemplar_refs:
                sh, sw = bank.exemplar(ex)[0].shape
                h, w = plain.shape
                pts = bank.object_info(ex, None).points
                x = np.clip(np.rint((pts[:, 0] + 0.5) * (w / sw) - 0.5), 0, w - 1).astype(int)
                y = np.clip(np.rint((pts[:, 1] + 0.5) * (h / sh) - 0.5), 0, h - 1).astype(int)
                assert bank.coverage(ex, ref, thr) == np.count_nonzero(plain[y, x]) / len(pts)
