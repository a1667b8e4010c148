"""BraTS 2018 training layout: ``HGG|LGG/<case>/<case>_<modality>.nii.gz`` + ``<case>_seg.nii.gz``.

Task: whole tumour (label > 0). One modality (FLAIR by default), per-slice min-max to [0, 1] as
the paper does.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from shared.classmaps import BRATS_MAP
from shared.errors import ConfigError, DataError
from shared.intensity import SLICE_MINMAX, validate_preset
from shared.sources.base import Source, layout_hint, require_dir
from shared.sources.io import nifti_shape
from shared.sources.nifti_pair import (load_pair, read_image_chunks, read_label_counts, read_label_slices, read_labels,
                                      read_raw_image)
from shared.volume import Volume

MODALITIES = ("t1", "t1ce", "t2", "flair")
GRADES = ("HGG", "LGG")


class BratsSource(Source):
    name = "brats"
    reader_modules = ("nibabel",)  # the NIfTI header (shared.sources.io)
    task = "single"
    classmap = BRATS_MAP

    def __init__(self, root: str | Path, *, modality: str = "flair", intensity: Any = None):
        if modality not in MODALITIES:
            raise ConfigError(f"unknown BraTS modality {modality!r} (choose from {', '.join(MODALITIES)})")
        preset = dict(SLICE_MINMAX) if intensity is None else validate_preset(intensity, "--intensity")
        # the option is recorded only when it differs from the paper's rule (old manifests stay valid)
        options: dict[str, Any] = {"modality": modality}
        if preset != SLICE_MINMAX:
            options["intensity"] = preset
        super().__init__(root, options)
        self.modality = modality
        self.intensity = preset
        require_dir(self.root, "BraTS root")
        self._cases  # scan now: a wrong root or a scan without its label fails at open time

    @cached_property
    def _cases(self) -> dict[str, Path]:
        case_dirs: dict[str, Path] = {}
        grades = [self.root / g for g in GRADES if (self.root / g).is_dir()]
        if not grades:
            hint = layout_hint(self.root, "HGG") or layout_hint(self.root, "LGG")
            raise DataError(f"{self.root}: no HGG/ or LGG/ folder (expected the BraTS 2018 training layout "
                            f"HGG|LGG/<case>/<case>_<modality>.nii.gz){hint}")
        for grade in grades:
            for case_dir in sorted(p for p in grade.iterdir() if p.is_dir()):
                case = case_dir.name
                image, label = self._paths(case_dir)
                if not image.is_file():
                    raise DataError(f"{case_dir}: no {self.modality.upper()} image {image.name}")
                if not label.is_file():
                    raise DataError(f"{image}: image has no label (expected {label.name} beside it)")
                if case in case_dirs:
                    raise DataError(f"{case_dir}: case {case} appears twice (also in {case_dirs[case]})")
                case_dirs[case] = case_dir
        if not case_dirs:
            raise DataError(f"{self.root}: no BraTS case folders under {', '.join(g.name for g in grades)}/")
        return case_dirs

    def _paths(self, case_dir: Path) -> tuple[Path, Path]:
        case = case_dir.name
        return case_dir / f"{case}_{self.modality}.nii.gz", case_dir / f"{case}_seg.nii.gz"

    def case_ids(self) -> list[str]:
        return sorted(self._cases)

    def files(self, case_id: str) -> tuple[Path, ...]:
        self.check_case(case_id)
        return self._paths(self._cases[case_id])

    def num_slices(self, case_id: str) -> int:
        return nifti_shape(self.files(case_id)[0])[2]

    def load(self, case_id: str) -> Volume:
        image, label = self.files(case_id)
        grade = self._cases[case_id].parent.name
        return load_pair(self, case_id, image, label, {"modality": self.modality, "grade": grade})

    def load_labels(self, case_id: str):
        return read_labels(self, self.files(case_id)[1])

    def label_counts(self, case_id: str):
        return read_label_counts(self, self.files(case_id)[1])

    def image_chunks(self, case_id: str, chunk: int = 8):
        return read_image_chunks(self, self.files(case_id)[0], chunk)

    def raw_image(self, case_id: str):
        return read_raw_image(self.files(case_id)[0])

    def label_slices(self, case_id: str, slices: list[int]):
        return read_label_slices(self, self.files(case_id)[1], slices)
