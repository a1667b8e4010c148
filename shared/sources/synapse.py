"""Synapse multi-atlas abdomen: ``RawData/Training/img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz``.

HU clipped to [-125, 275] then scaled to [0, 1]; the 13 organ codes mapped to the 8 evaluated
organs (1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver, 6 stomach, 7 aorta,
8 pancreas; everything else background). Case ids are the 4-digit numbers (``"0001"``).
"""
from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

from shared.classmaps import SYNAPSE_MAP
from shared.errors import DataError
from shared.intensity import CT_ABDOMEN, validate_preset
from shared.sources.base import layout_hint, require_dir
from shared.sources.nifti_pair import PairedNiftiSource

_IMG = re.compile(r"^img(\d+)\.nii(\.gz)?$")


class SynapseSource(PairedNiftiSource):
    name = "synapse"
    task = "multi"
    classmap = SYNAPSE_MAP

    def __init__(self, root: str | Path, *, intensity: Any = None):
        # --intensity replaces the TransUNet window (recorded only then: old manifests stay valid)
        preset = dict(CT_ABDOMEN) if intensity is None else validate_preset(intensity, "--intensity")
        super().__init__(root, {} if preset == CT_ABDOMEN else {"intensity": preset})
        self.intensity = preset
        require_dir(self.root, "Synapse root")
        self._cases

    @cached_property
    def _training(self) -> Path:
        # accept the release root, RawData/ or RawData/Training/ itself
        for base in (self.root / "RawData" / "Training", self.root / "Training", self.root):
            if (base / "img").is_dir():
                return base
        raise DataError(f"{self.root}: no RawData/Training/img/ folder (expected the Synapse layout "
                        "RawData/Training/img/imgNNNN.nii.gz with label/labelNNNN.nii.gz)"
                        + layout_hint(self.root, "RawData/Training"))

    @cached_property
    def _cases(self) -> dict[str, tuple[Path, Path]]:
        img_dir = self._training / "img"
        label_dir = require_dir(self._training / "label", "Synapse label")
        cases: dict[str, tuple[Path, Path]] = {}
        for image in sorted(img_dir.iterdir()):
            match = _IMG.match(image.name)
            if not match:
                continue
            number = match.group(1)
            label = label_dir / image.name.replace("img", "label", 1)
            if not label.is_file():
                raise DataError(f"{image}: image has no label (expected {label})")
            cases[number] = (image, label)
        if not cases:
            raise DataError(f"{img_dir}: no imgNNNN.nii.gz files")
        return cases

