"""Background pool fallback for scans with foreground in every slice, and organ erasing."""
from __future__ import annotations

import numpy as np

from synth.synthesis.background import background_image
from synth.selection.exemplar_list import select_exemplars
from synth.selection.rules import FALLBACK_POOL_FRACTION, background_pool


def test_background_image_is_identity_without_foreground():
    image = np.random.default_rng(0).random((40, 50), dtype=np.float32)
    label = np.zeros((40, 50), np.uint8)
    assert background_image(image, label) is image


def test_background_image_erases_labelled_pixels_smoothly():
    rng = np.random.default_rng(1)
    image = (0.4 + 0.02 * rng.standard_normal((64, 64))).astype(np.float32)
    label = np.zeros((64, 64), np.uint8)
    label[20:40, 20:40] = 3
    image[label > 0] = 0.95  # a bright organ
    out = background_image(image, label)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert abs(float(out[label > 0].mean()) - 0.4) < 0.05  # the organ is gone, filled like its surroundings
    np.testing.assert_array_equal(out[:10], image[:10])     # far from the organ nothing changes
    np.testing.assert_array_equal(out, background_image(image, label))  # deterministic


def test_synapse_sample_falls_back_to_least_foreground_slices(synapse_root):
    from shared.sources import open_source

    source = open_source("synapse", synapse_root)
    listing = select_exemplars(source, source.case_ids(), "1", seed=0)
    pool = listing.background_pool
    exemplar = (listing.exemplars[0]["volume"], listing.exemplars[0]["slice"])
    volume = source.load("0001") if "0001" in source.case_ids() else source.load(source.case_ids()[0])
    # every slice of this cropped CT holds an organ, so the strict rule finds nothing
    assert all(volume.label[k].any() for k in range(volume.num_slices))
    assert len(pool) == max(1, round(FALLBACK_POOL_FRACTION * (volume.num_slices - 1)))
    assert all("erased_pixels" in e for e in pool)
    assert exemplar not in {(e["volume"], e["slice"]) for e in pool}
    fg = {k: int((volume.label[k] > 0).sum()) for k in range(volume.num_slices)}
    chosen = {e["slice"] for e in pool}
    worst_chosen = max(fg[k] for k in chosen)
    assert all(fg[k] >= worst_chosen for k in fg if k not in chosen and (volume.volume_id, k) != exemplar)
    assert listing.selection["background_rule"]["no_foreground"] is False


def test_strict_pool_preferred_when_available(brats_root):
    from shared.sources import open_source

    source = open_source("brats", brats_root)
    listing = select_exemplars(source, source.case_ids()[:1], "5", seed=0)
    assert listing.background_pool and not any("erased_pixels" in e for e in listing.background_pool)
