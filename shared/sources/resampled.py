"""A source read at a common in-plane pixel spacing (``open_source(..., spacing=MM)``, ``--spacing``).

:class:`ResampledSource` wraps any source and resamples every slice it hands out with
:mod:`shared.spacing` (images after the intensity preset: area / bilinear; labels: nearest with
no class lost in a slice). Slice counts and indices are unchanged (in-plane only), so exemplar
lists, manifests and ``--points`` keep counting the same slices. ``describe()`` records
``options.spacing`` (absent for native reads, so manifests of native builds are unchanged).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.arrays import slice_class_counts
from shared.sources.base import Source
from shared.spacing import resample_image, resample_label, resample_volume, target_geometry
from shared.volume import Volume


class ResampledSource(Source):
    """``inner`` read at ``mm`` x ``mm`` pixels in-plane."""

    def __init__(self, inner: Source, mm: float):
        self.inner, self.mm = inner, float(mm)
        self.root = inner.root
        self.options = {**inner.options, "spacing": self.mm}
        self.name, self.task, self.classmap = inner.name, inner.task, inner.classmap
        self.intensity = inner.intensity
        self.reader_modules = inner.reader_modules
        self._hw: dict[str, tuple[int, int]] = {}

    def __getattr__(self, item: str) -> Any:  # source-specific helpers (e.g. a source's own facts)
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    # unchanged by an in-plane resampling
    def case_ids(self) -> list[str]:
        return self.inner.case_ids()

    def files(self, case_id: str) -> tuple[Path, ...]:
        return self.inner.files(case_id)

    def num_slices(self, case_id: str) -> int:
        return self.inner.num_slices(case_id)

    def slice_files(self, case_id: str, slice_index: int):
        return self.inner.slice_files(case_id, slice_index)

    def check_case(self, case_id: str) -> None:
        self.inner.check_case(case_id)

    # resampled
    def load(self, case_id: str) -> Volume:
        vol = resample_volume(self.inner.load(case_id), self.mm)
        self._hw[case_id] = tuple(vol.label.shape[1:])  # type: ignore[assignment]
        return vol

    def _out_hw(self, case_id: str, native_hw: tuple[int, int]) -> tuple[int, int]:
        if case_id not in self._hw:
            self._hw[case_id] = target_geometry((1, *native_hw), self.native_spacing(case_id), np.eye(4), self.mm)[0]
        return self._hw[case_id]

    def native_spacing(self, case_id: str) -> tuple[float, float, float]:
        """(S, R, C) mm of the case as stored (the header where the source allows)."""
        from shared.sources.nifti_pair import PairedNiftiSource

        if isinstance(self.inner, PairedNiftiSource):  # the header alone
            import nibabel as nib

            from shared.sources.io import nifti_geometry

            return nifti_geometry(nib.load(str(self.inner.files(case_id)[0])))[0]
        return tuple(float(s) for s in self.inner.load(case_id).spacing)  # type: ignore[return-value]

    def load_labels(self, case_id: str) -> np.ndarray:
        labels = self.inner.load_labels(case_id)
        return resample_label(labels, self._out_hw(case_id, labels.shape[1:]))

    def label_counts(self, case_id: str):
        labels = self.load_labels(case_id)
        return tuple(int(n) for n in labels.shape), slice_class_counts(labels, len(self.class_names))

    def image_chunks(self, case_id: str, chunk: int = 8):
        shape, chunks = self.inner.image_chunks(case_id, chunk)
        out_hw = self._out_hw(case_id, tuple(shape[1:]))
        return (shape[0], *out_hw), ((k0, resample_image(c, out_hw)) for k0, c in chunks)

    def label_slices(self, case_id: str, slices: list[int]) -> dict[int, np.ndarray]:
        got = self.inner.label_slices(case_id, slices)
        if not got:
            return got
        ks = list(got)
        stack = resample_label(np.stack([got[k] for k in ks]), self._out_hw(case_id, got[ks[0]].shape))
        return {k: stack[i] for i, k in enumerate(ks)}

    def raw_image(self, case_id: str):
        return None  # no stored form at this grid (scans take image_chunks)

    def __repr__(self) -> str:
        return f"<ResampledSource {self.mm} mm of {self.inner!r}>"
