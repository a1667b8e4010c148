"""The Source interface every reader implements (see DESIGN.md, "Sources")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shared.arrays import slice_class_counts
from shared.classmaps import ClassMap
from shared.errors import DataError
from shared.volume import Volume


class Source:
    """A labelled dataset on disk (or generated), read volume by volume.

    Subclasses set ``name``, ``task``, ``classmap``, ``intensity`` and implement ``case_ids``,
    ``load``, ``files`` and ``num_slices``.
    """

    name: str = ""
    task: str = "single"  # "single" (one target) or "multi" (several organs)
    classmap: ClassMap
    intensity: dict[str, Any]
    # modules the readers import on first use: a parallel scan imports them before its worker
    # processes fork, so they inherit them instead of importing them once per worker and pass
    reader_modules: tuple[str, ...] = ()

    def __init__(self, root: str | Path | None, options: dict[str, Any] | None = None):
        self.root = Path(root).resolve() if root is not None else None
        self.options = dict(options or {})

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classmap.names

    def case_ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, case_id: str) -> Volume:
        raise NotImplementedError

    def files(self, case_id: str) -> tuple[Path, ...]:
        raise NotImplementedError

    def num_slices(self, case_id: str) -> int:
        """Number of slices of a case, cheaply (header only where the format allows)."""
        return self.load(case_id).num_slices

    def load_labels(self, case_id: str) -> np.ndarray:
        """The label volume alone, uint8 (S, R, C) task classes (the first, cheap pass of a scan:
        label files are small). Sources with separate label files override this."""
        return self.load(case_id).label

    def label_counts(self, case_id: str) -> tuple[tuple[int, ...], np.ndarray]:
        """The label volume's (S, R, C) shape and its (S, classes) per-slice class pixel counts:
        ``slice_class_counts(load_labels(case_id))``. Sources with label files count the raw codes
        (``ClassMap.slice_counts``: no mapped copy of the volume)."""
        labels = self.load_labels(case_id)
        return tuple(int(n) for n in labels.shape), slice_class_counts(labels, len(self.class_names))

    def image_chunks(self, case_id: str, chunk: int = 8) -> tuple[tuple[int, ...], Iterator[tuple[int, np.ndarray]]]:
        """The image volume's (S, R, C) shape and an iterator of ``(k0, float32 slices k0..k0+n)``,
        equal to ``load(case_id).image[k0:k0 + n]``, without the label and, where the source
        allows, without holding the whole float32 volume (streaming scans)."""
        image = self.load(case_id).image
        return image.shape, ((k0, image[k0:k0 + chunk]) for k0 in range(0, image.shape[0], chunk))

    def label_slices(self, case_id: str, slices: list[int]) -> dict[int, np.ndarray]:
        """``{k: load_labels(case_id)[k]}`` for the given slice indices (uint8 task classes).
        Sources with label files map only those slices' codes (the scan's second look at a label
        whose whole volume it already checked)."""
        labels = self.load_labels(case_id)
        return {int(k): np.array(labels[k], dtype=np.uint8) for k in slices}

    def raw_image(self, case_id: str) -> np.ndarray | None:
        """The image volume as stored, slice-first (S, R, C) and checked finite, before the intensity
        preset: ``apply_intensity(raw_image(c), self.intensity)`` equals ``load(c).image``. None
        where the source keeps no such form (generated or already normalised data). Streaming scans
        use it for exact integer shortcuts (``shared.intensity.ExactSliceMinMax``)."""
        return None

    def slice_files(self, case_id: str, slice_index: int) -> dict[str, Path | None]:
        """The files an exemplar slice comes from: ``{"image_file": ..., "label_file": ...}``."""
        files = self.files(case_id)
        return {"image_file": files[0] if files else None, "label_file": files[-1] if files else None}

    def describe(self) -> dict[str, Any]:
        """JSON-able record sufficient to re-open this source with :func:`open_described`."""
        return {
            "name": self.name,
            "root": str(self.root) if self.root is not None else None,
            "options": dict(self.options),
            "intensity": dict(self.intensity),
            "class_names": list(self.class_names),
            "task": self.task,
        }

    def check_case(self, case_id: str) -> None:
        if case_id not in set(self.case_ids()):
            raise DataError(f"{self.name} source at {self.root}: unknown case {case_id!r}")

    def _volume(self, case_id: str, image: np.ndarray, label: np.ndarray, spacing, affine,
                files: tuple[Path, ...], meta: dict | None = None) -> Volume:
        return Volume(
            volume_id=case_id,
            image=image,
            label=label,
            spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
            affine=np.asarray(affine, dtype=np.float64),
            source_files=tuple(str(f) for f in files),
            class_names=self.class_names,
            meta=dict(meta or {}),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} root={self.root}>"


def layout_hint(root: Path, marker: str, depth: int = 2) -> str:
    """"; the layout is in SUB (use --root SUB)" when ``marker`` (e.g. "HGG") lies a level or two
    below ``root`` (a root given one level too high), else ""."""
    pattern = marker
    for _ in range(depth):
        pattern = "*/" + pattern
        try:
            found = sorted(p for p in root.glob(pattern) if p.is_dir())
        except OSError:
            return ""
        if found:
            subs = []
            for sub in found:
                for _ in range(len(Path(marker).parts)):
                    sub = sub.parent
                subs.append(str(sub))
            also = f" (also in {', '.join(subs[1:3])}{', ...' if len(subs) > 3 else ''})" if len(subs) > 1 else ""
            return f"; {Path(marker).parts[0]}/ is in a subfolder: use --root {subs[0]}{also}"
    return ""


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def check_shapes(image_shape: tuple, label_shape: tuple, image_file: Path, label_file: Path) -> None:
    if tuple(image_shape) != tuple(label_shape):
        raise DataError(f"{image_file}: image shape {tuple(image_shape)} does not match label "
                        f"{label_file.name} shape {tuple(label_shape)}")
