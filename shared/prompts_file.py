"""Prompt files: the clicks and boxes a user gives `train predict --prompts FILE`, one structure each.

JSON, schema ``data_manifests/schemas/prompt_file.schema.json``::

    {"space": "RAS",
     "classes": ["spleen", "liver"],
     "prompts": [{"class": "spleen", "point": [-120.5, 40.2, 101.0]},
                 {"class": "liver", "box": [[-60, 10, 95.5], [20, 80, 95.5]]}]}

- ``space``: ``"RAS"``: world coordinates in mm, RAS+ (x grows towards the patient's right, y
  anterior, z superior: as nibabel's affines and 3D Slicer's markups give them); ``"voxel"``: voxel indices ``[i, j, k]`` = (column,
  row, slice) of the volume as read (NIfTI order, 0-based; ``read_nifti`` / ``read_dicom_series``).
- ``classes``: the output's labels 1..N in this order (``<name>.labels.json`` = ``{"1": name, ...}``).
- A point is rounded to the nearest voxel; a box's two corners are too, must lie in one slice (the
  same k after conversion) and give the inclusive pixel box (x0, y0, x1, y1) on that slice.
- Anything wrong (schema, unknown class, a point outside the volume, a box across slices) is one
  :class:`DataError` line naming the file and the prompt.

>>> prompts = read_prompt_file("prompts.json", affine, raw.shape)   # raw in NIfTI order (i, j, k)
>>> prompts.by_slice()   # {k: [Prompt, ...]}: image k of the (S, R, C) volume, x = column, y = row
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError
from shared.fileio import read_json

SCHEMA_NAME = "prompt_file"
SPACES = ("RAS", "voxel")


@dataclass(frozen=True)
class Prompt:
    """One prompt on one slice, in the slice-first volume's pixel coordinates."""

    class_name: str
    class_index: int  # 1..N, the position in the file's "classes" plus one
    kind: str  # "point" or "box"
    slice_index: int  # k: image k of the (S, R, C) volume
    point: tuple[int, int] | None  # (x = column i, y = row j) for a point
    box: tuple[int, int, int, int] | None  # (x0, y0, x1, y1), inclusive, x0 <= x1, y0 <= y1, for a box
    number: int  # index of the entry in the file's "prompts" list

    def voxel(self) -> tuple[int, int, int]:
        """The point as a NIfTI-order voxel index (i, j, k); for a box, its centre (rounded down)."""
        if self.point is not None:
            return (self.point[0], self.point[1], self.slice_index)
        x0, y0, x1, y1 = self.box  # type: ignore[misc]
        return ((x0 + x1) // 2, (y0 + y1) // 2, self.slice_index)


@dataclass(frozen=True)
class PromptFile:
    path: Path
    space: str
    classes: tuple[str, ...]  # label 1..N names
    prompts: tuple[Prompt, ...]  # in file order

    def labels_json(self) -> dict[str, str]:
        """``{"1": "spleen", ...}``: what ``<name>.labels.json`` holds."""
        return {str(i): name for i, name in enumerate(self.classes, start=1)}

    def by_slice(self) -> dict[int, list[Prompt]]:
        """{slice index: its prompts in file order}, slices ascending."""
        out: dict[int, list[Prompt]] = {}
        for p in sorted(self.prompts, key=lambda p: (p.slice_index, p.number)):
            out.setdefault(p.slice_index, []).append(p)
        return out

    def for_class(self, name: str) -> list[Prompt]:
        return [p for p in self.prompts if p.class_name == name]

    @property
    def unprompted(self) -> tuple[str, ...]:
        """Classes listed without any prompt (their label stays empty)."""
        given = {p.class_name for p in self.prompts}
        return tuple(c for c in self.classes if c not in given)


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))


def _entry_kind(path: Path, number: int, entry: Any) -> str:
    """A clearer message than the schema's oneOf for the usual mistakes."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: prompt {number}: expected an object like {{\"class\": NAME, \"point\": [x, y, z]}}, "
                        f"got {entry!r}"[:300])
    kinds = [k for k in ("point", "box") if k in entry]
    if len(kinds) != 1:
        raise DataError(f"{path}: prompt {number}: needs exactly one of \"point\" or \"box\", "
                        f"got keys {sorted(entry)}")
    if "class" not in entry:
        raise DataError(f"{path}: prompt {number}: missing \"class\"")
    return kinds[0]


def parse_prompt_data(data: Any, path: str | Path, affine: np.ndarray, shape_ijk: Sequence[int], *,
                      known_classes: Sequence[str] | None = None) -> PromptFile:
    """:func:`read_prompt_file` on already-parsed JSON (``path`` names it in messages)."""
    from shared.manifest import validate

    path = Path(path)
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        for number, entry in enumerate(data["prompts"]):
            _entry_kind(path, number, entry)
    validate(data, SCHEMA_NAME, where=str(path))
    space = data["space"]
    classes = tuple(data["classes"])
    if known_classes is not None:
        known = [c for c in known_classes if c != "background"]
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise DataError(f"{path}: class{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                            f"not among the model's classes ({', '.join(known)})")
    shape = tuple(int(n) for n in shape_ijk)
    if len(shape) != 3:
        raise ValueError(f"shape_ijk must be 3 numbers, got {shape_ijk!r}")
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64)) if space == "RAS" else None

    def voxel(number: int, xyz: Sequence[float], what: str) -> tuple[int, int, int]:
        values = [float(v) for v in xyz]
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}: prompt {number}: {what} {list(xyz)} is not finite")
        ijk = values if to_voxel is None else list((to_voxel @ np.array([*values, 1.0]))[:3])
        index = tuple(_round(v) for v in ijk)
        if not all(0 <= v < n for v, n in zip(index, shape)):
            at = "" if to_voxel is None else f" (voxel {list(index)})"
            raise DataError(f"{path}: prompt {number}: {what} {list(xyz)}{at} is outside the volume "
                            f"(voxel index space {shape[0]} x {shape[1]} x {shape[2]}, space {space})")
        return index  # type: ignore[return-value]

    prompts = []
    for number, entry in enumerate(data["prompts"]):
        name = entry["class"]
        if name not in classes:
            raise DataError(f"{path}: prompt {number}: unknown class {name!r} (\"classes\": {', '.join(classes)})")
        index = classes.index(name) + 1
        if "point" in entry:
            i, j, k = voxel(number, entry["point"], "point")
            prompts.append(Prompt(name, index, "point", k, (i, j), None, number))
            continue
        (i0, j0, k0), (i1, j1, k1) = (voxel(number, c, f"box corner {c_index}") for c_index, c in enumerate(entry["box"]))
        if k0 != k1:
            raise DataError(f"{path}: prompt {number}: box corners lie in slices {k0} and {k1}; a box is drawn "
                            "on one slice (give both corners the same slice coordinate)")
        prompts.append(Prompt(name, index, "box", k0, None, (min(i0, i1), min(j0, j1), max(i0, i1), max(j0, j1)), number))
    return PromptFile(path, space, classes, tuple(prompts))


def read_prompt_file(path: str | Path, affine: np.ndarray, shape_ijk: Sequence[int], *,
                     known_classes: Sequence[str] | None = None) -> PromptFile:
    """Read and check a prompt file against the volume it is for: ``affine`` its 4x4 RAS affine,
    ``shape_ijk`` its NIfTI-order shape (the raw array's ``shape`` from ``read_nifti`` /
    ``read_dicom_series``). ``known_classes``: the model's class names (``background`` ignored);
    a class outside them is an error. One-line DataErrors naming the file."""
    path = Path(path)
    data = read_json(path, what="prompt file", expect=dict)
    return parse_prompt_data(data, path, affine, shape_ijk, known_classes=known_classes)


__all__ = ["Prompt", "PromptFile", "parse_prompt_data", "read_prompt_file"]
