"""shared.intensity: the MedSAM presets (lite_medsam's input contract) and their validation."""
from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.intensity import apply_intensity, validate_preset
from shared.sources import open_described, open_source


def test_mr_medsam_clips_the_volume_content_percentiles_and_keeps_background_zero():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 30, size=(6, 20, 20)).astype(np.float32)
    vol[:, :4] = -2.5                               # background = the volume minimum (z-scored FLAIR)
    vol[2, 10, 10] = 32767                          # an LGG outlier
    out = apply_intensity(vol, "mr-medsam")
    content = vol[vol > vol.min()].astype(np.float64)
    lo, hi = np.percentile(content, 0.5), np.percentile(content, 99.5)
    expected = np.clip((vol - lo) / (hi - lo), 0, 1)
    assert np.allclose(out, expected, atol=1e-6)
    assert np.all(out[:, :4] == 0) and out[2, 10, 10] == 1.0
    assert out.dtype == np.float32


def test_ct_medsam_is_window_40_400():
    hu = np.array([[[-1000, -160, 40, 240, 1000]]], np.float32)
    assert apply_intensity(hu, "ct-medsam").ravel().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("bad", [{"kind": "minmax", "lower_percentile": 60},
                                 {"kind": "minmax", "lower_percentile": -1},
                                 {"kind": "minmax", "lower_percentile": True}])
def test_bad_lower_percentile_is_a_one_line_error(bad):
    with pytest.raises(ConfigError, match="lower_percentile") as err:
        validate_preset(bad)
    assert "\n" not in str(err.value)


def test_synapse_takes_an_intensity_preset_and_records_it(synapse_root):
    plain = open_source("synapse", synapse_root)
    medsam = open_source("synapse", synapse_root, intensity="ct-medsam")
    assert plain.describe()["options"] == {}                     # old manifests stay as they were
    assert medsam.intensity == validate_preset("ct-medsam")
    again = open_described(medsam.describe())
    assert again.intensity == medsam.intensity
    cid = plain.case_ids()[0]
    assert not np.array_equal(plain.load(cid).image, medsam.load(cid).image)
