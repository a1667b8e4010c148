"""ClassMap.slice_counts: per-slice class counts on raw codes equal counting the mapped labels."""
from __future__ import annotations

import numpy as np
import pytest

from shared.arrays import slice_class_counts
from shared.classmaps import BRATS_MAP, SYNAPSE8_MAP, SYNAPSE_MAP, ClassMap
from shared.errors import DataError

MAPS = {
    "brats": BRATS_MAP,  # codes 1-4 -> tumour: one run
    "synapse13": SYNAPSE_MAP,  # 13 codes -> 8 organs, background codes between organ codes
    "synapse8": SYNAPSE8_MAP,
    "gapped": ClassMap(("background", "a", "b"), {0: 0, 2: 1, 3: 2, 4: 1, 5: 1, 9: 2}),  # codes 1, 6-8 unmapped
}


def _mapped_counts(cmap: ClassMap, raw: np.ndarray) -> np.ndarray:
    return slice_class_counts(cmap.apply(raw, "f.nii.gz"), len(cmap.names))


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32])
def test_counts_on_raw_codes_equal_counts_of_the_mapped_labels(name: str, dtype) -> None:
    cmap = MAPS[name]
    codes = np.array(sorted(cmap.codes))
    rng = np.random.default_rng(len(name) + np.dtype(dtype).itemsize)
    for trial in range(12):
        present = rng.choice(codes, size=rng.integers(1, len(codes) + 1), replace=False)  # any subset
        raw = rng.choice(present, size=(7, 9, 11)).astype(dtype)
        if trial % 3 == 0:  # Fortran-ordered and slice-first, like a NIfTI array made slice-first
            raw = np.asfortranarray(raw.transpose(2, 1, 0)).transpose(2, 1, 0)
        got = cmap.slice_counts(raw, "f.nii.gz")
        assert got.dtype == np.int64 and np.array_equal(got, _mapped_counts(cmap, raw)), (name, present)


@pytest.mark.parametrize("raw, match", [
    (np.array([[[0, 5]]], np.uint8), r"f\.nii\.gz: label values 5 are outside the class map"),
    (np.array([[[0, -1]]], np.int16), r"f\.nii\.gz: label values -1 are outside"),
    (np.array([[[0, 1, 7]]], np.int16), r"f\.nii\.gz: label values 1, 7 are outside"),  # unmapped codes inside 0..max
    (np.array([[[0.5, 1.0]]], np.float32), r"f\.nii\.gz: label contains non-integer values"),
])
def test_bad_codes_give_the_same_errors_as_apply(raw: np.ndarray, match: str) -> None:
    cmap = BRATS_MAP if raw.max() == 5 else MAPS["gapped"]
    for read in (cmap.apply, cmap.slice_counts):
        with pytest.raises(DataError, match=match):
            read(raw, "f.nii.gz")


def test_float_and_bool_labels_go_through_apply() -> None:
    raw = np.array([[[0.0, 2.0], [4.0, 0.0]]], np.float32)
    assert BRATS_MAP.slice_counts(raw, "f").tolist() == [[2, 2]]
    assert BRATS_MAP.slice_counts(raw.astype(bool), "f").tolist() == [[2, 2]]
