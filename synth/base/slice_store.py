"""Exact compact storage of slices in memory (the background pool of a bank, the slices a
streaming scan keeps; which slices are pooled is :mod:`synth.selection.background_pool`).

:class:`BackgroundStore` holds each background slice in the smallest exact form
(``encode_slice``): ``uint8`` when the slice has at most 256 levels k/s, ``uint16`` plus its
scale ``s`` when its values are k/s for integers k < 65536 (a per-slice min-max or a CT window of
integer scans: BraTS int16 FLAIR, Synapse HU), else ``float32``. Decoding is exact (``float32(k) /
float32(s)`` is the very division the preprocessing made), so synthesized samples are bit-identical
to a float32 bank; float16 was measured and rejected because it changes the samples.
It also records cheap per-slice metadata (:class:`BackgroundInfo`) for background choosers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from shared.arrays import nonzero_box
from shared.intensity import ExactSliceMinMax


@dataclass(frozen=True)
class EncodedSlice:
    data: np.ndarray  # uint8 / uint16 levels, or float32 values
    scale: float  # levels are data / scale (float32 division); 0 for float32 data
    max_level: int | None = None  # the largest level, where the encoder knows it (None: not known)

    def decode(self) -> np.ndarray:
        if self.data.dtype == np.float32:
            return self.data
        return self.data.astype(np.float32) / np.float32(self.scale)

    def above(self, threshold: float) -> np.ndarray:
        """``decode() > threshold`` (bool), for integer levels without decoding: the decoded value
        rises with the level, so the mask is ``data >= L`` for the first level ``L`` whose value is
        above, found by decoding a few levels with the very same operations (a window around
        ``threshold * scale``, checked by its bracket; every level up to the maximum otherwise)."""
        data = self.data
        if data.dtype == np.float32 or not self.scale > 0 or data.size == 0:
            return self.decode() > threshold
        guess = int(np.floor(float(threshold) * float(self.scale)))
        window = np.arange(max(guess - 2, 0), max(guess + 4, 0), dtype=np.int64)
        above = _decode_levels(window, self.scale) > threshold
        if above.any() and (window[0] == 0 or not above[0]):  # the bracket: the first True follows a False
            first = int(window[int(above.argmax())])
        else:
            top = np.arange(int(data.max()) + 1, dtype=np.int64)  # rare: search every level present
            hits = np.flatnonzero(_decode_levels(top, self.scale) > threshold)
            if hits.size == 0:
                return np.zeros(data.shape, dtype=bool)
            first = int(hits[0])
        if first > np.iinfo(data.dtype).max:
            return np.zeros(data.shape, dtype=bool)
        return data >= data.dtype.type(first)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def in_unit_range(self) -> bool:
        """Integer levels no larger than the scale: every decoded value ``float32(level) /
        float32(scale)`` is finite and in [0, 1] (a correctly rounded quotient of integers
        ``0 <= level <= scale <= 65535`` cannot leave it), so range checks need not decode it."""
        if self.data.dtype == np.float32 or not self.scale > 0 or self.data.size == 0:
            return False
        top = self.max_level if self.max_level is not None else int(self.data.max())
        return top <= self.scale


@dataclass(frozen=True)
class CroppedSlice:
    """An :class:`EncodedSlice` kept as the bounding box of its nonzero levels (everything outside
    is zero bytes): how the pool travels and how :class:`BackgroundStore` holds it. A BraTS
    background slice's box is ~1/5 of the slice (the head on a black field), so a scan worker
    pickles, pipes and the parent unpickles ~5x fewer bytes, and the bank holds ~5x less.
    :meth:`decode` and :meth:`above` give the whole slice's values and mask (the same bits as the
    uncropped slice's: a zero level decodes to +0.0)."""

    data: np.ndarray  # the levels inside the box
    top_left: tuple[int, int]  # (row, column) of the box in the slice
    shape: tuple[int, int]  # the whole slice's (rows, columns)
    scale: float
    max_level: int | None = None

    @classmethod
    def of(cls, encoded: EncodedSlice) -> "CroppedSlice":
        data = encoded.data
        if data.dtype in (np.uint8, np.uint16) and data.ndim == 2:  # OpenCV: ~3x numpy's comparison
            import cv2

            nonzero = cv2.compare(data, 0, cv2.CMP_GT)
        else:
            nonzero = data.view(f"u{data.itemsize}") != 0  # bitwise: a float32 -0.0 is kept
        r0, r1, c0, c1 = nonzero_box(nonzero) or (0, 0, 0, 0)
        return cls(data[r0:r1, c0:c1].copy(), (r0, c0), (int(data.shape[0]), int(data.shape[1])), encoded.scale,
                   encoded.max_level)

    @property
    def _box(self) -> tuple[slice, slice]:
        r0, c0 = self.top_left
        return slice(r0, r0 + self.data.shape[0]), slice(c0, c0 + self.data.shape[1])

    @property
    def _inner(self) -> EncodedSlice:
        return EncodedSlice(self.data, self.scale, self.max_level)

    def decode(self) -> np.ndarray:
        """The whole slice's float32 values (:meth:`EncodedSlice.decode` of the box, zeros around it)."""
        out = np.zeros(self.shape, dtype=np.float32)
        if self.data.size:
            out[self._box] = self._inner.decode()
        return out

    def above(self, threshold: float) -> np.ndarray:
        """``decode() > threshold`` (bool): :meth:`EncodedSlice.above` on the box; outside it every
        value is +0.0, compared the same way (a float32 array against ``threshold``)."""
        outside = bool((np.zeros(1, dtype=np.float32) > threshold)[0])
        mask = np.full(self.shape, outside, dtype=bool)
        if self.data.size:
            mask[self._box] = self._inner.above(threshold)
        return mask

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def in_unit_range(self) -> bool:
        """As :attr:`EncodedSlice.in_unit_range`; the zeros outside the box are in range."""
        return self._inner.in_unit_range


def _decode_levels(levels: np.ndarray, scale: float) -> np.ndarray:
    """:meth:`EncodedSlice.decode`'s arithmetic on given levels (float32 level / float32 scale)."""
    return levels.astype(np.float32) / np.float32(scale)


def encode_slice(image: np.ndarray) -> EncodedSlice:
    """The smallest exact form of a float32 slice in [0, 1] (see the module docstring); ~6 passes
    over the slice when it encodes (the usual case), a few more when it does not."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    bits = image.view(np.uint32)
    smallest = float(np.min(image, where=image > 0, initial=np.inf))
    if smallest == np.inf:  # no positive value: all +0.0 (anything else stays float32)
        if not bits.any():
            return EncodedSlice(np.zeros(image.shape, np.uint8), 1.0, 0)
        return EncodedSlice(image.copy(), 0.0)
    if float(image.max()) <= 1.0:
        for scale in _scales_to_try(smallest, image.ravel()[::13]):
            encoded = _try_scale(image, bits, scale)
            if encoded is not None:
                return encoded
    return EncodedSlice(image.copy(), 0.0)


def encode_minmax_slice(minmax: "ExactSliceMinMax", k: int) -> EncodedSlice:
    """``encode_slice(minmax.image(k))``, the same result, mostly without the float32 slice.

    The slice's values are ``float32(d) / float32(span)`` for integer offsets ``d`` (per-slice
    min-max of an integer scan). This follows ``encode_slice``'s order of scales and its cheap
    rejection on the 1-in-13 subsample (made from the offsets: the same floats). The scale
    ``span`` always decodes the whole slice exactly (``float32(d) / float32(span)`` is the
    preprocessing's own division; ``rint(float32(d / span) * span) = d`` for ``d <= 65535``), so
    when it is the first to pass, the encoding is the offsets themselves, uint8 up to 255, else
    uint16. Any other outcome (another scale passing the subsample, spans above 65535) goes to the
    general encoder."""
    span = int(minmax.span[k])
    if not 0 < span <= 65535:
        return encode_slice(minmax.image(k))
    offsets = minmax.offsets(k)
    fspan = np.float32(span)
    smallest = float(np.float32(int(offsets[offsets > 0].min())) / fspan)  # the smallest positive value
    sample = offsets.ravel()[::13].astype(np.float32) / fspan
    for scale in _scales_to_try(smallest, sample):
        if not _subsample_decodes(sample, scale):
            continue
        if scale == fspan:
            # the slice's maximum is its minimum + span: the largest offset is the span
            return EncodedSlice(offsets.astype(np.uint8) if span <= 255 else offsets, float(scale), span)
        break
    return encode_slice(minmax.image(k))


def _scales_to_try(smallest: float, sample: np.ndarray) -> Iterator[np.float32]:
    """The scales ``encode_slice`` tries, in order: ``m / step`` for m = 1..4, where the step is
    first the smallest positive value (usually 1 / scale), then the smallest gap between distinct
    values of the subsample (a sort of ~4000 values, not of the slice)."""
    for step in (smallest, None):
        if step is None:
            uniq = np.unique(sample)
            step = float(np.diff(uniq).min()) if uniq.size > 1 else smallest
        for m in (1, 2, 3, 4):
            yield np.float32(round(m / step))


def _subsample_decodes(sample: np.ndarray, scale: np.float32) -> bool:
    """A wrong scale almost always shows on a subsample: the cheap rejection of ``_try_scale``."""
    return bool(0 < scale <= 65535) and np.array_equal(np.rint(sample * scale).astype(np.float32) / scale, sample)


def _try_scale(image: np.ndarray, bits: np.ndarray, scale: np.float32) -> EncodedSlice | None:
    if not _subsample_decodes(image.ravel()[::13], scale):
        return None
    levels = image * scale  # <= scale <= 65535: fits uint16
    np.rint(levels, out=levels)
    data = levels.astype(np.uint16)
    decoded = data.astype(np.float32)
    decoded /= scale
    if not np.array_equal(decoded.view(np.uint32), bits):
        return None
    return EncodedSlice(data.astype(np.uint8) if scale <= 255 else data, float(scale), int(data.max()))


@dataclass(frozen=True)
class BackgroundInfo:
    """Cheap per-background facts for background choosers (synthesis placement)."""

    slice: int  # index in its volume
    num_slices: int  # slices of its volume
    content: float  # fraction of pixels with content (see synth.selection.rules.scan_volume)
    content_pixels: int  # the same as a pixel count ("content area")

    @property
    def position(self) -> float:
        """Relative height in the volume: 0 first slice, 1 last."""
        return self.slice / max(1, self.num_slices - 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "position": self.position}


class BackgroundStore(Mapping):
    """Background slices by :class:`synth.synthesis.bank.SliceRef`, stored exactly and compactly (encoded,
    then cropped to their nonzero box: :class:`CroppedSlice`); reading one returns its float32
    image (decoded on access, ~0.02 ms for a 240 x 240 BraTS slice). Insertion order is kept (the
    bank's background order). Forked build workers share it without copying."""

    def __init__(self) -> None:
        self._slices: dict[Any, CroppedSlice | EncodedSlice] = {}
        self.info: dict[Any, BackgroundInfo] = {}

    def add(self, ref: Any, image: np.ndarray | EncodedSlice | CroppedSlice, info: BackgroundInfo | None = None) -> None:
        self._slices[ref] = _stored_form(image)
        if info is not None:
            self.info[ref] = info

    def __getitem__(self, ref: Any) -> np.ndarray:
        return self._slices[ref].decode()

    def above(self, ref: Any, threshold: float) -> np.ndarray:
        """``self[ref] > threshold`` (bool), mostly without decoding (:meth:`EncodedSlice.above`)."""
        return self._slices[ref].above(threshold)

    def shape(self, ref: Any) -> tuple[int, int]:
        """A slice's (height, width), without decoding it."""
        return tuple(self._slices[ref].shape)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._slices)

    def __len__(self) -> int:
        return len(self._slices)

    def validate(self, check: Any) -> None:
        """Run the bank's range check ``check(ref, image) -> checked image`` (2D, at least 2 x 2,
        finite, in [0, 1], clipped) on every slice that could fail or change under it, one decoded at
        a time; a slice the check changes is stored again in its checked form. A 2D slice whose
        levels are :attr:`EncodedSlice.in_unit_range` passes it unchanged by construction and is not
        decoded (a scan's pool: 4096 decodes, ~0.6 s in the parent before synthesis can start)."""
        for ref, encoded in list(self._slices.items()):
            if len(encoded.shape) == 2 and min(encoded.shape) >= 2 and encoded.in_unit_range:
                continue
            image = self[ref]
            checked = check(ref, image)
            if checked is not image and not np.array_equal(checked, image):
                self._slices[ref] = _stored_form(checked)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._slices.values())

    def dtypes(self) -> dict[str, int]:
        """How many slices are stored in each form (for the build log / dataset.json)."""
        counts: dict[np.dtype, int] = {}
        for s in self._slices.values():
            counts[s.data.dtype] = counts.get(s.data.dtype, 0) + 1
        return {str(dtype): n for dtype, n in counts.items()}  # str(dtype) once per form: ~15 us a call


def _stored_form(image: np.ndarray | EncodedSlice | CroppedSlice) -> CroppedSlice | EncodedSlice:
    """How the store keeps a slice: encoded (:func:`encode_slice`) and cropped; a slice that is not
    2D stays whole (the bank's check refuses it with its own message)."""
    if isinstance(image, CroppedSlice):
        return image
    encoded = image if isinstance(image, EncodedSlice) else encode_slice(image)
    return CroppedSlice.of(encoded) if encoded.data.ndim == 2 else encoded


def fill_store(store: BackgroundStore, items: Iterable[tuple[Any, np.ndarray | EncodedSlice, BackgroundInfo | None]]) -> BackgroundStore:
    for ref, image, info in items:
        store.add(ref, image, info)
    return store
