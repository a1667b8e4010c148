"""shared.spacing: parsing --spacing, in-plane resampling of images and labels, affines."""
from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.spacing import (DEFAULT_SPACING, default_spacing, map_points, parse_spacing, resample_image,
                            resample_label, resample_volume, resampled_hw, spacing_record, target_geometry)
from shared.volume import Volume


@pytest.mark.parametrize("text, mm", [("native", None), (None, None), ("1", 1.0), ("0.7", 0.7), (" 3mm ", 3.0),
                                      (0.98, 0.98), ("NATIVE", None)])
def test_parse_spacing(text, mm):
    assert parse_spacing(text) == mm


@pytest.mark.parametrize("bad, fragment", [("abc", "expected a pixel size"), ("0", "between"), ("-1", "between"),
                                           ("nan", "between"), ("1000", "between"), (True, "expected a pixel size")])
def test_parse_spacing_errors_are_one_line(bad, fragment):
    with pytest.raises(ConfigError) as info:
        parse_spacing(bad)
    message = str(info.value)
    assert fragment in message and "--spacing" in message and "\n" not in message


def test_defaults_are_native_and_recorded_as_such():
    assert all(v is None for v in DEFAULT_SPACING.values())
    assert default_spacing("brats") is None and default_spacing("demo") is None
    assert spacing_record(None) == "native" and spacing_record(1) == 1.0


def test_resampled_hw_keeps_the_field_of_view():
    assert resampled_hw((101, 122), (3.0, 3.0), 1.0) == (303, 366)
    assert resampled_hw((101, 122), (3.0, 3.0), 0.7) == (433, 523)
    assert resampled_hw((512, 512), (0.98, 0.98), 3.0) == (167, 167)


def test_image_round_trip_and_smooth_content():
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float32)
    ramp = np.stack([(xx + 2 * yy) / 100.0 + k for k in range(3)])  # a linear image: kept by both filters
    up = resample_image(ramp, (60, 90))
    assert up.shape == (3, 60, 90) and up.dtype == np.float32
    back = resample_image(up, (20, 30))  # area average of the bilinear upsample
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(back[inner], ramp[inner], atol=1e-5)
    const = np.full((2, 17, 13), 0.25, np.float32)
    np.testing.assert_allclose(resample_image(const, (5, 7)), 0.25, atol=1e-6)


def test_label_upsampling_then_downsampling_is_exact():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 9, (4, 11, 13)).astype(np.uint8)
    up = resample_label(lab, (33, 39))
    assert set(np.unique(up)) == set(np.unique(lab))
    np.testing.assert_array_equal(resample_label(up, (11, 13)), lab)


def test_downsampling_keeps_every_class_of_a_slice():
    lab = np.zeros((3, 60, 60), np.uint8)
    lab[0, 10:40, 10:40] = 6          # a big organ
    lab[0, 45, 45] = 4                # a one-pixel organ that nearest sampling misses
    lab[1, 20:22, 31] = 8             # two pixels
    lab[2, 1, 1] = 3
    lab[2, 2, 2] = 5                  # two tiny organs falling into one target pixel
    out = resample_label(lab, (6, 6))
    for k in range(3):
        assert set(np.unique(out[k])) == set(np.unique(lab[k])), k
    assert out[0, 4, 4] == 4          # at the target pixel under its own pixel centre
    assert (out[1] == 8).sum() >= 1 and (out[0] == 6).sum() >= 9


def test_affine_keeps_world_positions_and_volume_meta():
    affine = np.array([[-3.0, 0, 0, 100], [0, -3.0, 0, 50], [0, 0, 2.5, -10], [0, 0, 0, 1]])
    vol = Volume("v", np.zeros((4, 10, 20), np.float32), np.zeros((4, 10, 20), np.uint8), (2.5, 3.0, 3.0),
                 affine, (), ("background", "organ"))
    out = resample_volume(vol, 1.0)
    assert out.image.shape == (4, 30, 60) and out.spacing == (2.5, 1.0, 1.0)
    assert out.meta["native"]["shape"] == [4, 10, 20]
    corner_old = affine @ np.array([-0.5, -0.5, 0, 1])   # outer corner of voxel (0, 0)
    corner_new = out.affine @ np.array([-0.5, -0.5, 0, 1])
    np.testing.assert_allclose(corner_new, corner_old)
    centre_old = affine @ np.array([(20 - 1) / 2, (10 - 1) / 2, 3, 1])
    centre_new = out.affine @ np.array([(60 - 1) / 2, (30 - 1) / 2, 3, 1])
    np.testing.assert_allclose(centre_new, centre_old)
    assert resample_volume(vol, None) is vol and resample_volume(vol, 3.0) is vol
    hw, spacing, _ = target_geometry((4, 10, 20), (2.5, 3.0, 3.0), affine, 0.7)
    assert hw == (43, 86) and spacing[1] == pytest.approx(30 / 43)


def test_map_points_pixel_centres():
    np.testing.assert_allclose(map_points([[0, 0], [9, 4]], (5, 10), (15, 30)), [[1, 1], [28, 13]])
    np.testing.assert_allclose(map_points(map_points([[3, 2]], (5, 10), (15, 30)), (15, 30), (5, 10)), [[3, 2]])
