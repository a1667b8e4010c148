"""How to show an axial slice the way radiologists read it (shared by `train` overlays and
`synth show` / `synth sheet`).

Radiological convention: the patient's anterior at the top (the spine of an axial CT at the
bottom) and the patient's right on the image's left. Slices are stored as ``[j, i]`` = (row,
column) of the NIfTI array; the volume's affine says where i and j point (RAS+ world axes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def display_orientation(affine: np.ndarray | None) -> tuple[bool, bool, bool] | None:
    """(transpose, flip rows, flip columns) that show an axial slice ``[j, i]`` radiologically.

    None when unknown (no affine) or the slice is not axial (then the array is shown as stored).
    """
    if affine is None:
        return None
    import nibabel as nib

    try:
        ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    except Exception:  # a degenerate affine: show the array as stored
        return None
    world_i, world_j = int(ornt[0, 0]), int(ornt[1, 0])
    if {world_i, world_j} != {0, 1}:
        return None
    transpose = world_i == 1  # i runs along y: make the rows (second array axis after .T) follow y
    col_sign = ornt[1, 1] if transpose else ornt[0, 1]  # direction of the screen's column axis in x (+1 = to R)
    row_sign = ornt[0, 1] if transpose else ornt[1, 1]  # direction of the screen's row axis in y (+1 = to A)
    # radiological: columns run towards the patient's left (-x), rows towards posterior (-y)
    return transpose, bool(row_sign > 0), bool(col_sign > 0)


def orient(arrays: Sequence[np.ndarray], points: Sequence[tuple], how: tuple[bool, bool, bool] | None
           ) -> tuple[list[np.ndarray], list[tuple]]:
    """Apply :func:`display_orientation`'s answer to 2-D arrays and (class, x, y) points."""
    arrays = list(arrays)
    points = [tuple(p) for p in points]
    if how is None:
        return arrays, points
    transpose, flip_rows, flip_cols = how
    if transpose:
        arrays = [a.T for a in arrays]
        points = [(c, y, x) for c, x, y in points]
    h, w = arrays[0].shape
    if flip_rows:
        arrays = [a[::-1] for a in arrays]
        points = [(c, x, h - 1 - y) for c, x, y in points]
    if flip_cols:
        arrays = [a[:, ::-1] for a in arrays]
        points = [(c, w - 1 - x, y) for c, x, y in points]
    return [np.ascontiguousarray(a) for a in arrays], points


def dataset_affine(info: dict[str, Any], root: str | Path | None = None) -> np.ndarray | None:
    """The affine of a dataset's source scans, read cheaply: a packed volume's recorded affine, or
    the NIfTI header of the first exemplar's image file under the source root (``root``
    overrides it). None for generated or non-NIfTI sources, or when the file is gone."""
    volumes = info.get("volumes") or []
    if volumes and volumes[0].get("affine") is not None:
        return np.asarray(volumes[0]["affine"], np.float64)
    source = info.get("source") or {}
    base = root if root is not None else source.get("root")
    exemplars = info.get("exemplars") or []
    rel = ((exemplars[0].get("files") or {}).get("image_file") if exemplars else None)
    if base is None or not rel or not str(rel).endswith((".nii", ".nii.gz")):
        return None
    path = Path(base) / rel
    if not path.is_file():
        return None
    try:
        import nibabel as nib

        return np.asarray(nib.load(str(path)).affine, np.float64)
    except Exception:  # an unreadable header: show the arrays as stored
        return None
