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
from shared.sources.base import layout_hint, require_dir
from shared.sources.nifti_pair import PairedNiftiSource

MODALITIES = ("t1", "t1ce", "t2", "flair")
GRADES = ("HGG", "LGG")


class BratsSource(PairedNiftiSource):
    """BraTS cases as (image, label) pairs; ``Volume.meta`` also names the modality and grade."""
    name = "brats"
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
    def _cases(self) -> dict[str, tuple[Path, Path]]:
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
        return {case: self._paths(case_dir) for case, case_dir in case_dirs.items()}

    def _paths(self, case_dir: Path) -> tuple[Path, Path]:
        case = case_dir.name
        return case_dir / f"{case}_{self.modality}.nii.gz", case_dir / f"{case}_seg.nii.gz"

    def _volume_meta(self, case_id: str) -> dict:
        return {"modality": self.modality, "grade": self._cases[case_id][0].parent.parent.name}
