"""The background choice of the anatomy rule (synth/synthesis/background_choice.py): fit backgrounds
hold the object, the eligible slices follow the per-slice rule."""
from __future__ import annotations

from synth.synthesis.config import load_config
from synth.synthesis.sample import synthesize
from synthkit import small_heads_bank

CONFIG = load_config()


def test_fit_backgrounds_prefer_slices_that_hold_the_object() -> None:
    bank = small_heads_bank(n_bg_small=6, n_bg_large=2)
    cfg = load_config()
    used = [synthesize(i, 2, bank, cfg, "single")[2]["background"] for i in range(30)]
    assert all(b["choice"] == "fit" for b in used)
    assert all(b["ref"]["slice"] >= 100 for b in used)  # only the large heads hold these tumours
    assert {b["tier"] for b in used} <= {"level", "room"}


def test_eligible_backgrounds_match_the_per_slice_rule_and_decode_each_slice_once(monkeypatch) -> None:
    """The vectorised pool table gives exactly the per-slice rule's lists (pool order), for every
    exemplar and scale, and decodes each stored background once, not once per exemplar (a
    240-patient pool of 4096 slices x 150 exemplars took 20 s of decoding before)."""
    from synth.synthesis.background_choice import anatomy_index
    from synth.synthesis.bank import make_bank
    from synth.base.slice_store import EncodedSlice

    src = small_heads_bank(n_bg_small=8, n_bg_large=3)
    bank = make_bank({(r.volume, r.slice): src.exemplar(r) for r in src.exemplar_refs},
                     {(r.volume, r.slice): src.background(r) for r in src.background_refs}, src.class_names)
    decodes = []
    original = EncodedSlice.decode
    monkeypatch.setattr(EncodedSlice, "decode", lambda self: decodes.append(1) or original(self))
    pl = CONFIG.task("single").placement
    idx = anatomy_index(bank)
    for scale_low in (0.5, 0.8, 1.0, 1.3):
        for base in bank.exemplar_refs:
            got, tier = idx.eligible_backgrounds(base, pl, scale_low)
            ex_img = bank.exemplar(base)[0]
            info = bank.object_info(base, None)
            y0, y1, x0, x1 = info.bbox
            ex_area = idx.exemplar_area(base, pl.content_threshold)
            room, level = [], []
            for ref in bank.background_refs:        # the rule, one slice at a time
                s = idx.background_stats(ref, pl.content_threshold)
                h, w = bank.background(ref).shape
                fy, fx = h / ex_img.shape[0], w / ex_img.shape[1]
                if (s.area >= info.count * fy * fx * scale_low * scale_low * pl.min_inside
                        and s.height >= (y1 - y0 + 1) * fy * scale_low and s.width >= (x1 - x0 + 1) * fx * scale_low):
                    room.append(ref)
                    mapped = ex_area * fy * fx
                    if mapped > 0 and pl.level_ratio * mapped <= s.area <= mapped / pl.level_ratio:
                        level.append(ref)
            want = (level, "level") if level else (room, "room") if room else (list(bank.background_refs), "pool")
            assert (got, tier) == want
    monkeypatch.setattr(EncodedSlice, "decode", original)
    fresh = anatomy_index(make_bank({(r.volume, r.slice): src.exemplar(r) for r in src.exemplar_refs},
                                    {(r.volume, r.slice): src.background(r) for r in src.background_refs},
                                    src.class_names))
    decodes.clear()
    looks: list[int] = []  # content masks: EncodedSlice.above (integer levels: no decode at all)
    above = EncodedSlice.above
    monkeypatch.setattr(EncodedSlice, "decode", lambda self: decodes.append(1) or original(self))
    monkeypatch.setattr(EncodedSlice, "above", lambda self, t: looks.append(1) or above(self, t))
    for base in fresh.bank.exemplar_refs:
        fresh.eligible_backgrounds(base, pl, 0.8)
    assert len(looks) == len(fresh.bank.background_refs) and len(decodes) <= len(looks)
