"""The one in-memory form of a labelled scan that every source produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """A labelled 3D scan, held slice-first.

    Arrays are (slices, rows, cols): the NIfTI array transposed (2, 1, 0), the convention of the
    TransUNet preprocessed data. ``image[k]`` is therefore the slice at index k along the NIfTI's
    third axis.
    """

    volume_id: str
    image: np.ndarray  # float32 (S, R, C), values in [0, 1]
    label: np.ndarray  # uint8 (S, R, C), task class indices (0 = background)
    spacing: tuple[float, float, float]  # mm along (slices, rows, cols) = NIfTI zooms reversed
    affine: np.ndarray  # 4x4 affine of the source NIfTI (maps NIfTI (i, j, k) index space to mm)
    source_files: tuple[str, ...]  # paths the volume was read from
    class_names: tuple[str, ...]  # index -> name; class_names[0] == "background"
    meta: dict = field(default_factory=dict)  # source-specific extras (e.g. modality)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])
