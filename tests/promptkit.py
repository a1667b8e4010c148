"""Prompt files for tests and measurements: boxes around each labelled structure, in RAS mm.

``box_prompts(label_ijk, affine, class_names)`` gives one box per class on the slice where the class
has its largest area (``every_slice=True``: a box on every slice holding it), each the class's
tight bounding box on that slice, corners converted from voxel (i, j, k) to RAS mm by the affine:
what a user drawing one box per organ in a viewer writes (shared/prompts_file.py reads it back to
the same voxels).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def slice_box(mask_ij: np.ndarray) -> tuple[int, int, int, int]:
    """(i0, j0, i1, j1): inclusive voxel extent of a 2D mask indexed [i, j]."""
    ii, jj = np.nonzero(mask_ij)
    return int(ii.min()), int(jj.min()), int(ii.max()), int(jj.max())


def ras(affine: np.ndarray, ijk: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in (np.asarray(affine, np.float64) @ np.array([*ijk, 1.0]))[:3]]


def box_prompts(label_ijk: np.ndarray, affine: np.ndarray, class_names: Sequence[str], *,
                every_slice: bool = False) -> dict:
    """A prompt file (dict) with boxes in RAS mm; ``class_names[c - 1]`` is label value c of
    ``label_ijk`` (NIfTI order (i, j, k)). Classes absent from the label get no prompt."""
    prompts = []
    for c, name in enumerate(class_names, start=1):
        m = np.asarray(label_ijk) == c
        areas = m.reshape(-1, m.shape[2]).sum(0)
        if not areas.any():
            continue
        ks = [int(k) for k in np.flatnonzero(areas)] if every_slice else [int(areas.argmax())]
        for k in ks:
            i0, j0, i1, j1 = slice_box(m[:, :, k])
            prompts.append({"class": name, "box": [ras(affine, (i0, j0, k)), ras(affine, (i1, j1, k))]})
    return {"space": "RAS", "classes": list(class_names), "prompts": prompts}


def model_inputs(size: int, b: int = 1, seed: int = 0):
    """Seeded model inputs for the model tests: images (b,1,size,size) in [0,1), two clicks per
    image (b,2,2) in pixels, labels [[1, 0]] * b (one positive, one negative)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 1, size, size, generator=g)
    points = torch.randint(0, size, (b, 2, 2), generator=g).float()
    labels = torch.tensor([[1, 0]] * b)
    return images, points, labels
