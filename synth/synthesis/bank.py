"""The in-memory bank a synthesis draws from: exemplar slices (image + label) and backgrounds.

:class:`SliceRef` names a 2D slice of a source volume; :class:`SliceBank` holds the exemplar and
background slices in the order given (the exemplar list's), checks them, and caches per-slice
geometry (objects, content masks and boxes, coverage). :func:`make_bank` is how a build
(:mod:`synth.building.jobs`) and a replay (``synth verify --replay``, :mod:`synth.audit.verify`) assemble one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from shared.arrays import nonzero_box
from shared.errors import DataError
from synth.base.slice_store import BackgroundInfo, BackgroundStore, EncodedSlice

_MAX_POINTS = 256  # object pixels sampled for the "inside the background's body" check


@dataclass(frozen=True)
class SliceRef:
    """One 2D slice of a source volume: ``{"volume": id, "slice": k}`` in JSON."""

    volume: str
    slice: int

    def to_json(self) -> dict:
        return {"volume": self.volume, "slice": int(self.slice)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SliceRef":
        try:
            return cls(str(d["volume"]), int(d["slice"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad slice reference {d!r}: expected {{'volume': str, 'slice': int}}") from exc

    def __str__(self) -> str:
        return f"{self.volume}[{self.slice}]"


@dataclass(frozen=True)
class ObjectInfo:
    """Where an object (one class, or all foreground) sits in its exemplar slice."""

    count: int  # pixels
    bbox: tuple[int, int, int, int]  # y0, y1, x0, x1 inclusive
    center: tuple[float, float]  # centroid (x, y), pixels
    points: np.ndarray  # (N, 2) float64 (x, y), a deterministic subsample of its pixels
    crop: np.ndarray | None = None  # uint8 label inside bbox, C-contiguous (only class ``cls`` kept, as ``cls``)


class SliceBank:
    """Exemplar slices (image + label) and background slices (image) held in memory.

    ``exemplar_refs`` / ``background_refs`` keep the order given (the exemplar list's order); random
    draws index into these lists, so the same bank contents in the same order give the same samples.
    """

    def __init__(self, exemplars: Mapping[SliceRef, tuple[np.ndarray, np.ndarray]],
                 backgrounds: Mapping[SliceRef, np.ndarray], class_names: tuple[str, ...]):
        self.class_names = tuple(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "background":
            raise DataError(f"class names must start with 'background' and name at least one class, got {self.class_names}")
        n = len(self.class_names)
        self._exemplars: dict[SliceRef, tuple[np.ndarray, np.ndarray]] = {}
        self._counts: dict[SliceRef, np.ndarray] = {}
        for ref, (img, lab) in exemplars.items():
            img = _check_image(img, f"exemplar {ref}")
            lab = np.asarray(lab)
            if lab.dtype != np.uint8 or lab.shape != img.shape:
                raise DataError(f"exemplar {ref}: label must be uint8 with the image's shape {img.shape}, "
                                f"got {lab.dtype} {lab.shape}")
            counts = np.bincount(lab.ravel(), minlength=n)
            if counts.size > n:
                raise DataError(f"exemplar {ref}: label value {counts.size - 1} outside the class set 0..{n - 1}")
            self._exemplars[ref] = (img, np.ascontiguousarray(lab))
            self._counts[ref] = counts
        if hasattr(backgrounds, "validate"):  # a synth.base.slice_store.BackgroundStore: compact, decoded on access
            backgrounds.validate(lambda ref, img: _check_image(img, f"background {ref}"))
            self._backgrounds = backgrounds
        else:
            self._backgrounds = {ref: _check_image(img, f"background {ref}") for ref, img in backgrounds.items()}
        # cheap per-background facts (slice index, volume length, content area) where the caller has them
        self.background_info = dict(getattr(backgrounds, "info", {}))
        self.exemplar_refs: list[SliceRef] = list(self._exemplars)
        self.background_refs: list[SliceRef] = list(self._backgrounds)
        if not self.exemplar_refs:
            raise DataError("no exemplar slices to synthesize from")
        if not self.background_refs:
            raise DataError("empty background pool: no slice without foreground to paste onto")
        self._objects: dict[tuple[SliceRef, int | None], ObjectInfo] = {}
        self._with_class: dict[tuple[int | None, int], list[SliceRef]] = {}
        self._content_bbox: dict[tuple[SliceRef, float], tuple[int, int, int, int] | None] = {}
        self._content_bits_cache: dict[tuple[SliceRef, float], np.ndarray] = {}  # packed bits
        self._content_area: dict[tuple[SliceRef, float], int] = {}
        self._coverage: dict[tuple[SliceRef, SliceRef, float], float] = {}
        self._flat: dict[tuple[SliceRef, tuple[int, int]], tuple[np.ndarray, np.ndarray]] = {}

    def background_storage(self) -> dict[str, Any]:
        """How the backgrounds are held (recorded in dataset.json): slices, bytes, slices per dtype."""
        b = self._backgrounds
        if isinstance(b, BackgroundStore):
            return {"slices": len(b), "bytes": b.nbytes, "dtypes": b.dtypes()}
        return {"slices": len(b), "bytes": sum(int(img.nbytes) for img in b.values()), "dtypes": {"float32": len(b)}}

    def exemplar(self, ref: SliceRef) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._exemplars[ref]
        except KeyError:
            raise DataError(f"exemplar slice {ref} is not in the exemplar bank") from None

    def background(self, ref: SliceRef) -> np.ndarray:
        try:
            return self._backgrounds[ref]
        except KeyError:
            raise DataError(f"background slice {ref} is not in the background pool") from None

    def background_shape(self, ref: SliceRef) -> tuple[int, int]:
        """A background slice's (height, width), without decoding it."""
        b = self._backgrounds
        try:
            return b.shape(ref) if isinstance(b, BackgroundStore) else tuple(b[ref].shape)
        except KeyError:
            raise DataError(f"background slice {ref} is not in the background pool") from None

    def class_counts(self, ref: SliceRef) -> np.ndarray:
        self.exemplar(ref)
        return self._counts[ref]

    def exemplars_with(self, cls: int | None, min_pixels: int = 1) -> list[SliceRef]:
        """Exemplars (in bank order) with at least ``min_pixels`` of class ``cls`` (None: of any
        single foreground class)."""
        key = (cls, min_pixels)
        if key not in self._with_class:
            if cls is None:
                refs = [r for r in self.exemplar_refs if (self._counts[r][1:] >= min_pixels).any()]
            else:
                refs = [r for r in self.exemplar_refs if self._counts[r][cls] >= min_pixels]
            self._with_class[key] = refs
        return self._with_class[key]

    def object_info(self, ref: SliceRef, cls: int | None) -> ObjectInfo:
        """Geometry of class ``cls`` (None: all foreground) in an exemplar slice."""
        key = (ref, cls)
        info = self._objects.get(key)
        if info is None:
            _, lab = self.exemplar(ref)
            mask = lab > 0 if cls is None else lab == cls
            ys, xs = np.nonzero(mask)
            if ys.size == 0:
                raise DataError(f"exemplar slice {ref} has no pixels of class {cls}")
            step = max(1, -(-ys.size // _MAX_POINTS))
            pts = np.stack([xs[::step], ys[::step]], axis=1).astype(np.float64)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            crop = lab[y0:y1 + 1, x0:x1 + 1]
            if cls is not None:
                crop = (crop == cls).astype(np.uint8) * np.uint8(cls)
            info = ObjectInfo(int(ys.size), (y0, y1, x0, x1), (float(xs.mean()), float(ys.mean())), pts,
                              np.ascontiguousarray(crop))
            self._objects[key] = info
        return info

    def content_mask(self, ref: SliceRef, threshold: float) -> np.ndarray:
        """A background slice's content (body/head): pixels above ``threshold`` (bool, unpacked
        from the cached bits on each call)."""
        h, w = self.background_shape(ref)
        return np.unpackbits(self._content_bits(ref, threshold), count=h * w).view(bool).reshape(h, w)

    def content_area(self, ref: SliceRef, threshold: float) -> int:
        """Content pixels of a background slice (cached)."""
        self._content_bits(ref, threshold)
        return self._content_area[(ref, threshold)]

    def _content_bits(self, ref: SliceRef, threshold: float) -> np.ndarray:
        """The content mask packed 8 pixels a byte (np.packbits of the raveled mask), computed once
        with its area and bounding box. Why packed: a worker caches a mask for every pool slice
        it draws, 4096 x 57.6 kB = 236 MB as bool at 240 x 240, 29 MB as bits."""
        key = (ref, threshold)
        bits = self._content_bits_cache.get(key)
        if bits is None:
            b = self._backgrounds
            mask = b.above(ref, threshold) if isinstance(b, BackgroundStore) else self.background(ref) > threshold
            self._content_area[key] = int(np.count_nonzero(mask))
            box = nonzero_box(mask)
            self._content_bbox[key] = None if box is None else (box[0], box[1] - 1, box[2], box[3] - 1)  # inclusive
            bits = self._content_bits_cache[key] = np.packbits(mask.ravel())
        return bits

    def coverage(self, exemplar: SliceRef, background: SliceRef, threshold: float) -> float:
        """Fraction of an exemplar's foreground that falls on a background slice's content, by
        relative position (how well the background's anatomy matches the exemplar's); cached."""
        key = (exemplar, background, threshold)
        value = self._coverage.get(key)
        if value is None:
            bits = self._content_bits(background, threshold)
            byte, bit = self._flat_points(exemplar, self.background_shape(background))
            value = np.count_nonzero(bits.take(byte) & bit) / byte.size
            self._coverage[key] = value
        return value

    def _flat_points(self, ref: SliceRef, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Where an exemplar's foreground sample points fall, mapped by relative position (pixel
        edges aligned) into a frame of ``shape``, in :meth:`_content_bits`' packed mask: each
        point's byte and its bit in it (np.packbits is big-endian in bits). Cached per frame
        shape: a coverage is then one gather, one AND and one count."""
        key = (ref, shape)
        hit = self._flat.get(key)
        if hit is None:
            h, w = shape
            sh, sw = self.exemplar(ref)[0].shape
            pts = self.object_info(ref, None).points
            x = np.clip(np.rint((pts[:, 0] + 0.5) * (w / sw) - 0.5), 0, w - 1).astype(np.intp)
            y = np.clip(np.rint((pts[:, 1] + 0.5) * (h / sh) - 0.5), 0, h - 1).astype(np.intp)
            idx = y * w + x
            hit = self._flat[key] = (idx >> 3, np.left_shift(1, 7 - (idx & 7)).astype(np.uint8))
        return hit

    def content_bbox(self, ref: SliceRef, threshold: float) -> tuple[int, int, int, int] | None:
        """Bounding box (y0, y1, x0, x1) of a background slice's content (pixels > threshold)."""
        self._content_bits(ref, threshold)
        return self._content_bbox[(ref, threshold)]


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or img.shape[0] < 2 or img.shape[1] < 2:
        raise DataError(f"{what}: expected a 2D slice, got shape {img.shape}")
    if img.dtype != np.float32:
        img = img.astype(np.float32)
    if img.size and (not np.isfinite(img).all() or img.min() < -1e-4 or img.max() > 1 + 1e-4):
        raise DataError(f"{what}: image values must be finite and in [0, 1] (got {img.min():.4g}..{img.max():.4g})")
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0))


def make_bank(exemplars: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray]],
              backgrounds: Mapping[tuple[str, int], np.ndarray | EncodedSlice], class_names: tuple[str, ...],
              info: Mapping[tuple[str, int], BackgroundInfo] | None = None) -> SliceBank:
    """A bank from ``{(volume, slice): (image, label)}`` exemplars and ``{(volume, slice): image}``
    backgrounds (float32 images or their exact compact encoding, :mod:`synth.base.slice_store`), each kept
    in the order given; backgrounds are held in a :class:`~synth.base.slice_store.BackgroundStore` (with
    ``info``, the per-background facts the "fit" background choice uses, where known)."""
    info = info or {}
    store = BackgroundStore()
    for (v, k), image in backgrounds.items():
        store.add(SliceRef(v, k), image, info.get((v, k)))
    return SliceBank(exemplars={SliceRef(v, k): pair for (v, k), pair in exemplars.items()}, backgrounds=store,
                     class_names=tuple(class_names))
