"""bench/reference_bound.py: the split of the per-sample time and the ratio it allows."""
from __future__ import annotations

import pytest

from bench import reference_bound as rb
from synth.synthesis.config import load_config
from synth.synthesis.sample import paste_record, render_background, synthesize_with
from synthkit import abdomen_bank


def test_bound_budget_and_ratio_follow_from_the_split() -> None:
    ours = rb.Split(shared=0.5, render=0.3, store=0.2, check=0.1)
    ref = rb.Split(shared=0.5, render=6.0, store=1.5, check=0.1)
    b = rb.bound(ours, ref, 10.0)
    assert b.ratio == pytest.approx(8.0 / 1.0)
    assert b.bound == pytest.approx(8.0 / 0.5)  # our render and store free
    assert b.budget == pytest.approx(0.8 - 0.5)  # 10x: ours total <= 0.8 ms, 0.5 of it shared
    assert b.ours_own == pytest.approx(0.5)
    # a goal above the bound leaves no budget, and the table says so
    assert rb.bound(ours, ref, 20.0).budget < 0
    text = rb.table([("x", ours, ref, {})], 20.0)
    assert "(unreachable)" in text and "| x | ours (shard phase) |" in text and "**8.0x**" in text


def test_time_synthesis_times_the_renderers_inside_the_whole() -> None:
    bank, config = abdomen_bank(), load_config()
    total, rendering, check = rb.time_synthesis(bank, config, "multi", 0, 3, render_background, paste_record)
    assert 0.0 < rendering < total and check > 0.0
    # the timed renderers change nothing: the same samples as without the timers
    a = synthesize_with(0, 0, bank, config, "multi", render_background, paste_record)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return paste_record(*args, **kwargs)

    b = synthesize_with(0, 0, bank, config, "multi", render_background, counting)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all() and len(calls) == len(a[2]["objects"])
