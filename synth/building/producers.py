"""Producers: what makes sample ``i`` of a build, from ``i`` and the build's recorded inputs only.

A producer gives ``(image float [0, 1], label uint8, record extras)`` for sample ``i`` and its
sample id; :func:`synth.building.run.build_shard` writes them. Kinds: ``synthesized``
(:class:`SynthesisProducer`, cut-paste synthesis from the exemplar bank), ``exemplars``
(:class:`PreloadedSlices`, the exemplar slices themselves), ``all-slices`` and ``volumes``
(:class:`SliceProducer`, slices read from the source).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np

from shared.errors import DataError


class Producer:
    kind = ""

    def sample_id(self, i: int) -> str:
        raise NotImplementedError

    def make(self, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def extra_shard_info(self) -> dict[str, Any]:
        return {}


class SynthesisProducer(Producer):
    kind = "synthesized"
    in_range = True  # synthesize() returns images in [0, 1]: the writer skips its clip

    def __init__(self, bank: Any, config: Any, seed: int, task: str):
        self.bank, self.config, self.seed, self.task = bank, config, seed, task

    def sample_id(self, i: int) -> str:
        return f"s{i:06d}"

    def make(self, i: int):
        from synth.synthesis.sample import synthesize

        image, label, record = synthesize(i, self.seed, self.bank, self.config, self.task)
        return image, label, {"kind": self.kind, "synthesis": record_to_dict(record)}


class SliceProducer(Producer):
    """Slices read from the source (exemplars, all slices, packed volumes); volumes cached."""

    def __init__(self, kind: str, source: Any, refs: Sequence[tuple[str, int]], ids: Sequence[str]):
        self.kind, self.source, self.refs, self.ids = kind, source, list(refs), list(ids)
        self._cache: dict[str, Any] = {}
        self._geometry: dict[str, dict[str, Any]] = {}

    def sample_id(self, i: int) -> str:
        return self.ids[i]

    def volume(self, case: str):
        vol = self._cache.get(case)
        if vol is None:
            if len(self._cache) >= 2:  # shards walk volumes in order: two is plenty
                self._cache.pop(next(iter(self._cache)))
            vol = self.source.load(case)
            self._cache[case] = vol
            self._geometry[case] = {"spacing": [float(s) for s in vol.spacing],
                                    "affine": np.asarray(vol.affine, dtype=float).tolist(),
                                    "shape": [int(s) for s in vol.image.shape]}
        return vol

    def make(self, i: int):
        case, k = self.refs[i]
        vol = self.volume(case)
        if not 0 <= k < vol.num_slices:
            raise DataError(f"{case}: slice {k} out of range (volume has {vol.num_slices} slices)")
        return (vol.image[k], vol.label[k],
                {"kind": self.kind, "source": {"volume": case, "slice": int(k)}})

    def extra_shard_info(self) -> dict[str, Any]:
        return {"geometry": dict(self._geometry)}


def record_to_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    if hasattr(record, "to_dict"):
        return record.to_dict()
    return asdict(record)


def class_pixels(label: np.ndarray, class_names: Sequence[str], sample_id: str) -> dict[str, int]:
    """Pixels per class; a label value outside the class set is a DataError naming the sample."""
    n = len(class_names)
    top = int(label.max()) if label.size else 0
    if top >= n:
        raise DataError(f"sample {sample_id}: label value {top} outside the class set {tuple(class_names)}")
    if n <= 16:  # a few compares beat bincount's cast of the whole slice to int64 (~4x)
        fg = [int(np.count_nonzero(label == c)) for c in range(1, n)]
        counts = [label.size - sum(fg), *fg]
    else:
        counts = np.bincount(label.ravel(), minlength=n).tolist()
    return {name: int(c) for name, c in zip(class_names, counts)}



class PreloadedSlices(SliceProducer):
    """Exemplar slices already read by :func:`synth.building.jobs.read_cases` (no second read of the volumes)."""

    def __init__(self, kind: str, refs, ids, slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]):
        super().__init__(kind, None, refs, ids)
        self.slices = {ref: slices[ref] for ref in refs}

    def make(self, i: int):
        case, k = self.refs[i]
        image, label = self.slices[(case, k)]
        return image, label, {"kind": self.kind, "source": {"volume": case, "slice": int(k)}}

    def extra_shard_info(self) -> dict[str, Any]:
        return {}
