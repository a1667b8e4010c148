"""open_source(..., spacing=MM): the ResampledSource wrapper (shared/sources/resampled.py)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.sources import open_described, open_source
from shared.spacing import resample_image, resample_label


def test_native_is_the_default_and_records_nothing():
    src = open_source("demo-abdomen")
    assert "spacing" not in src.describe()["options"]
    assert type(src).__name__ == "DemoAbdomenSource"
    assert open_source("demo-abdomen", spacing="native").describe() == src.describe()


def test_resampled_source_reads_every_form_alike():
    native = open_source("demo-abdomen")
    src = open_source("demo-abdomen", spacing=5.0)  # phantoms are 2.5 mm in-plane, 128 x 128
    case = src.case_ids()[0]
    vol, nvol = src.load(case), native.load(case)
    assert vol.image.shape == (nvol.image.shape[0], 64, 64) and vol.spacing[1:] == (5.0, 5.0)
    np.testing.assert_array_equal(vol.image, resample_image(nvol.image, (64, 64)))
    np.testing.assert_array_equal(vol.label, resample_label(nvol.label, (64, 64)))
    fresh = open_source("demo-abdomen", spacing=5.0)  # no load() first: the cheap paths find the grid
    np.testing.assert_array_equal(fresh.load_labels(case), vol.label)
    shape, chunks = fresh.image_chunks(case, chunk=8)
    assert shape == vol.image.shape
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), vol.image)
    ks = [3, 10]
    got = fresh.label_slices(case, ks)
    for k in ks:
        np.testing.assert_array_equal(got[k], vol.label[k])
    _, counts = fresh.label_counts(case)
    assert counts.shape == (vol.label.shape[0], len(src.class_names))
    assert fresh.raw_image(case) is None and fresh.num_slices(case) == native.num_slices(case)
    for k in range(vol.label.shape[0]):  # no organ of a slice lost at 2x downsampling
        assert set(np.unique(vol.label[k])) == set(np.unique(nvol.label[k]))


def test_describe_records_the_spacing_and_reopens_it():
    src = open_source("demo-brain", spacing="3")
    desc = src.describe()
    assert desc["options"]["spacing"] == 3.0 and desc["name"] == "demo-brain"
    again = open_described(desc)
    assert again.describe() == desc
    assert pickle.loads(pickle.dumps(again)).describe() == desc  # worker processes get a copy
    assert "spacing" not in open_described(open_source("demo-brain").describe()).describe()["options"]


def test_bad_values_and_sources_without_geometry(tmp_path):
    with pytest.raises(ConfigError, match="--spacing 'x'"):
        open_source("demo-brain", spacing="x")
    root = tmp_path / "tu"
    (root / "train_npz").mkdir(parents=True)
    np.savez(root / "train_npz" / "case0001_slice000.npz", image=np.zeros((4, 4), np.float32),
             label=np.zeros((4, 4), np.float32))
    with pytest.raises(ConfigError, match="keep no pixel spacing"):
        open_source("transunet", root, spacing=1.0)
