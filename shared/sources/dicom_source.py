"""The ``dicom`` source: one DICOM series per case, labelled by a DICOM SEG or a NIfTI beside it.

Layout (docs/sources.md, "The dicom source")::

    ROOT/<case>/image/...        the case's CT/MR series (any file names, sub-folders allowed)
    ROOT/<case>/label.seg.dcm    its labels as a DICOM SEG referencing that series   (or)
    ROOT/<case>/label.nii.gz     its labels as a NIfTI (label.nii too) in the series' geometry
    ROOT/source.json             optional config (below); --config FILE names another one

Class names come from the config's ``classes`` or, without one, from the SEG files' segment labels
(the first case's segments in segment-number order, then labels new in later cases). Config keys:
``classes``, ``label_values`` (NIfTI labels: raw value -> class, as the nifti source),
``segment_classes`` (SEG: segment label -> class name, e.g. ``{"Tumor": "background"}``),
``intensity`` (default: ``ct-abdomen`` for CT, ``mri-slice-minmax`` for any other modality; --intensity
replaces it), ``task``, ``series`` (``{case: SeriesInstanceUID}`` for a case folder holding several
series), ``image`` (the image folder's name, default ``image``).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from shared.classmaps import ClassMap
from shared.errors import ConfigError, DataError
from shared.intensity import apply_intensity, intensity_chunks, validate_preset
from shared.sources.base import Source, require_dir
from shared.sources.dicom import DicomSeries, dicom_series_headers, read_dicom_series
from shared.sources.io import check_finite, read_nifti, to_slice_first
from shared.sources.nifti import DEFAULT_CONFIG_NAMES, parse_classmap, read_config
from shared.volume import Volume

SEG_LABEL_NAMES = ("label.seg.dcm",)
NIFTI_LABEL_NAMES = ("label.nii.gz", "label.nii")
_KEYS = {"classes", "label_values", "segment_classes", "intensity", "task", "series", "image"}
CT_PRESET = "ct-abdomen"
OTHER_PRESET = "mri-slice-minmax"
_AFFINE_TOL = 1e-3  # mm: a NIfTI label's affine must match the series' (after axis flips) this closely


def _matching_orientation(label: np.ndarray, label_affine: np.ndarray, affine: np.ndarray,
                          shape_ijk: tuple[int, int, int], label_file: Path, series: DicomSeries) -> np.ndarray:
    """The NIfTI label resampled onto the series' index grid when it holds the same voxels with its
    axes flipped or permuted (a converter's choice); a different grid is an error."""
    import nibabel.orientations as nio

    if label.shape == shape_ijk and np.allclose(label_affine, affine, atol=_AFFINE_TOL):
        return label
    transform = nio.ornt_transform(nio.io_orientation(label_affine), nio.io_orientation(affine))
    moved = nio.apply_orientation(label, transform)
    moved_affine = label_affine @ nio.inv_ornt_aff(transform, label.shape)
    if moved.shape != shape_ijk or not np.allclose(moved_affine, affine, atol=_AFFINE_TOL):
        raise DataError(f"{label_file}: label grid (shape {tuple(label.shape)}, affine origin "
                        f"{np.round(label_affine[:3, 3], 3).tolist()}) is not the geometry of the series "
                        f"{series.series_uid} in {series.folder} (shape {shape_ijk}, origin "
                        f"{np.round(affine[:3, 3], 3).tolist()})")
    return np.ascontiguousarray(moved)


class DicomSource(Source):
    name = "dicom"

    def __init__(self, root: str | Path, *, config: str | Path | None = None, intensity: Any = None):
        root_path = Path(root).resolve()
        require_dir(root_path, "dicom root")
        options: dict[str, Any] = {}
        if config is None:
            found = [root_path / n for n in DEFAULT_CONFIG_NAMES if (root_path / n).is_file()]
            config = found[0] if found else None
        cfg: dict[str, Any] = {}
        if config is not None:
            config_path = Path(config).resolve()
            options["config"] = str(config_path)
            cfg = read_config(config_path, known=_KEYS, what="dicom source config")
        if intensity is not None:
            options["intensity"] = validate_preset(intensity, "--intensity")
        super().__init__(root_path, options)
        self.config = cfg
        self.config_path = Path(options["config"]) if "config" in options else None
        where = self.config_path or root_path
        series = cfg.get("series", {})
        if not isinstance(series, dict) or not all(isinstance(v, str) for v in series.values()):
            raise ConfigError(f"{where}: 'series' must map case ids to SeriesInstanceUIDs")
        self.series_choice: dict[str, str] = dict(series)
        mapping = cfg.get("segment_classes", {})
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise ConfigError(f"{where}: 'segment_classes' must map segment labels to class names")
        self.segment_classes: dict[str, str] = dict(mapping)
        self.image_name = str(cfg.get("image", "image"))
        self._cases  # discovery: a wrong root or a case without labels fails now
        self.classmap = self._make_classmap(where)
        for case in self.series_choice:
            if case not in self._cases:
                raise ConfigError(f"{where}: 'series' names unknown case {case!r}")
        if "intensity" in options:
            self.intensity = options["intensity"]
        elif "intensity" in cfg:
            self.intensity = validate_preset(cfg["intensity"], f"{where}: intensity")
        else:
            modality = self._headers(self.case_ids()[0]).modality.upper()
            self.intensity = validate_preset(CT_PRESET if modality == "CT" else OTHER_PRESET)
        task = cfg.get("task", "single" if len(self.classmap.names) == 2 else "multi")
        if task not in ("single", "multi"):
            raise ConfigError(f"{where}: 'task' must be 'single' or 'multi', got {task!r}")
        self.task = task
        kinds = {kind for _, _, kind in self._cases.values()}
        self.reader_modules = ("pydicom",) + (("highdicom",) if "seg" in kinds else ()) + (
            ("nibabel",) if "nifti" in kinds else ())
        self._raw_cache: tuple[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for worker processes without the cached volume (headers travel, voxels do not)."""
        state = dict(self.__dict__)
        state["_raw_cache"] = None
        return state

    # ------------------------------------------------------------------------------ discovery
    @cached_property
    def _cases(self) -> dict[str, tuple[Path, Path, str]]:
        """case id -> (image folder, label file, "seg" | "nifti")."""
        cases: dict[str, tuple[Path, Path, str]] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            image = folder / self.image_name
            if not image.is_dir():
                continue
            labels = [folder / n for n in SEG_LABEL_NAMES + NIFTI_LABEL_NAMES if (folder / n).is_file()]
            if not labels:
                raise DataError(f"{image}: image series has no label (expected {folder / SEG_LABEL_NAMES[0]} "
                                f"or {folder / NIFTI_LABEL_NAMES[0]})")
            if len(labels) > 1:
                raise DataError(f"{folder}: several label files ({', '.join(p.name for p in labels)}); keep one")
            kind = "seg" if labels[0].name in SEG_LABEL_NAMES else "nifti"
            cases[folder.name] = (image, labels[0], kind)
        if not cases:
            raise DataError(f"{self.root}: no case folders with an {self.image_name}/ series "
                            f"(expected ROOT/<case>/{self.image_name}/*.dcm + label.seg.dcm or label.nii.gz)")
        return cases

    def _make_classmap(self, where: Path) -> ClassMap:
        """From the config's classes, else from the SEG segment labels (module docstring)."""
        from shared.dicom_seg import segment_labels

        if "classes" in self.config:
            return parse_classmap(self.config, where)
        if "label_values" in self.config:
            raise ConfigError(f"{where}: 'label_values' needs 'classes'")
        names: list[str] = ["background"]
        for case in self.case_ids():
            _, label, kind = self._cases[case]
            if kind != "seg":
                raise ConfigError(f"{label}: a NIfTI label needs the class names: put \"classes\" in "
                                  f"{self.root / 'source.json'} (or --config FILE; see docs/sources.md)")
            for seg_label in segment_labels(label).values():
                cls = self.segment_classes.get(seg_label, seg_label)
                if cls not in names:
                    names.append(cls)
        if len(names) < 2:
            raise DataError(f"{self.root}: the SEG files map every segment to background; no class to learn")
        return ClassMap.identity(tuple(names))

    # ------------------------------------------------------------------------------ series
    def _headers(self, case_id: str) -> DicomSeries:
        cache = self.__dict__.setdefault("_header_cache", {})
        if case_id not in cache:
            self.check_case(case_id)
            image, label, _ = self._cases[case_id]
            hint = f'set "series": {{"{case_id}": UID}} in the source config'
            cache[case_id] = dicom_series_headers(image, self.series_choice.get(case_id), choose_hint=hint,
                                                  skip=[label])
        return cache[case_id]

    def _raw(self, case_id: str) -> np.ndarray:
        """The series' voxels, slice-first (S, R, C), rescaled and finite (one case cached)."""
        if self._raw_cache is not None and self._raw_cache[0] == case_id:
            return self._raw_cache[1]
        series = self._headers(case_id)
        image, label, _ = self._cases[case_id]
        raw, _, again = read_dicom_series(image, series.series_uid, skip=[label])
        if again.files != series.files:
            raise DataError(f"{image}: the series' files changed while it was read")
        raw = to_slice_first(raw)
        check_finite(raw, image)
        self._raw_cache = (case_id, raw)
        return raw

    def _segment_map(self, case_id: str, labels_by_number: dict[int, str], label_file: Path) -> ClassMap:
        names = self.classmap.names
        codes = {0: 0}
        for number, seg_label in labels_by_number.items():
            cls = self.segment_classes.get(seg_label, seg_label)
            if cls not in names:
                raise DataError(f"{label_file}: segment {number} {seg_label!r} is not a class ({', '.join(names[1:])}); "
                                'map it with "segment_classes" in the source config')
            codes[number] = names.index(cls)
        return ClassMap(names, codes)

    def _raw_labels(self, case_id: str) -> tuple[np.ndarray, ClassMap, Path]:
        """(raw label codes (S, R, C), the class map for them, label file)."""
        _, label_file, kind = self._cases[case_id]
        series = self._headers(case_id)
        if kind == "seg":
            from shared.dicom_seg import read_dicom_seg

            codes, labels_by_number = read_dicom_seg(label_file, series)
            return codes, self._segment_map(case_id, labels_by_number, label_file), label_file
        raw, img = read_nifti(label_file)
        raw = _matching_orientation(np.asarray(raw), np.asarray(img.affine, dtype=np.float64), series.affine,
                                    series.shape_ijk, label_file, series)
        return to_slice_first(raw), self.classmap, label_file

    # ------------------------------------------------------------------------------ Source API
    def case_ids(self) -> list[str]:
        return sorted(self._cases)

    def files(self, case_id: str) -> tuple[Path, ...]:
        self.check_case(case_id)
        return (*self._headers(case_id).files, self._cases[case_id][1])

    def slice_files(self, case_id: str, slice_index: int) -> dict[str, Path | None]:
        """The slice's own DICOM file and the label file."""
        files = self._headers(case_id).files
        return {"image_file": files[int(slice_index)], "label_file": self._cases[case_id][1]}

    def num_slices(self, case_id: str) -> int:
        return self._headers(case_id).num_slices

    def load_labels(self, case_id: str) -> np.ndarray:
        raw, classmap, label_file = self._raw_labels(case_id)
        return classmap.apply(raw, str(label_file))

    def label_counts(self, case_id: str):
        raw, classmap, label_file = self._raw_labels(case_id)
        return tuple(int(n) for n in raw.shape), classmap.slice_counts(raw, str(label_file))

    def label_slices(self, case_id: str, slices: list[int]) -> dict[int, np.ndarray]:
        labels = self.load_labels(case_id)
        return {int(k): np.array(labels[k], dtype=np.uint8) for k in slices}

    def raw_image(self, case_id: str) -> np.ndarray:
        return self._raw(case_id)

    def image_chunks(self, case_id: str, chunk: int = 8):
        raw = self._raw(case_id)
        return raw.shape, intensity_chunks(raw, self.intensity, chunk)

    def load(self, case_id: str) -> Volume:
        series = self._headers(case_id)
        raw = self._raw(case_id)
        label = self.load_labels(case_id)
        image = apply_intensity(raw, self.intensity)
        meta = {"series_uid": series.series_uid, "modality": series.modality, "label_kind": self._cases[case_id][2]}
        return self._volume(case_id, image, label, series.spacing, series.affine, self.files(case_id), meta)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.config:
            out["config"] = self.config  # the content too, so a manifest stays readable if the file moves
        return out


__all__ = ["DicomSource"]
