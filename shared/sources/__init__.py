"""Source readers: every supported dataset layout read into :class:`shared.volume.Volume`.

>>> from shared.sources import open_source
>>> src = open_source("brats", "/data/MICCAI_BraTS_2018_Data_Training")
>>> vol = src.load(src.case_ids()[0])   # image float32 (S, R, C) in [0, 1], label uint8
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.sources.base import Source
from shared.sources.io import preprocess_raw, read_nifti

DATASETS = ("brats", "synapse", "transunet", "nifti", "dicom", "demo-brain", "demo-abdomen", "demo")
"""Names accepted by :func:`open_source` (``demo`` is an alias of ``demo-brain``)."""


def open_source(dataset: str, root: str | Path | None = None, *, modality: str = "flair",
                config: str | Path | None = None, intensity: Any = None, spacing: Any = "default") -> Source:
    """Open a dataset by name. The demo sources read no folder: a ``root`` for them is an error
    (silently ignoring it would let a user believe their data was read); ``modality`` applies to
    ``brats``; ``config`` to ``nifti`` and ``dicom`` (default: ``source.json`` in the root);
    ``intensity`` (a preset name or dict, see shared.intensity) replaces the intensity preset of
    ``brats``, ``synapse``, ``nifti`` and ``dicom`` sources (None: the source's own); ``spacing``
    (mm, ``"native"`` / None, or ``"default"``: ``shared.spacing.DEFAULT_SPACING`` of the dataset)
    resamples every slice to that in-plane pixel size (``shared.sources.resampled``)."""
    from shared.spacing import default_spacing, parse_spacing

    mm = default_spacing(dataset) if isinstance(spacing, str) and spacing == "default" else parse_spacing(spacing)
    source = _open(dataset, root, modality=modality, config=config, intensity=intensity)
    if mm is None:
        return source
    if source.name == "transunet":
        raise ConfigError(f"--spacing {mm:g}: the transunet files keep no pixel spacing (1 mm placeholders); "
                          "read the scans through their NIfTI layout (synapse) to resample them")
    from shared.sources.resampled import ResampledSource

    return ResampledSource(source, mm)


def _open(dataset: str, root, *, modality: str, config, intensity) -> Source:
    if dataset in ("demo", "demo-brain", "demo-abdomen") and root is not None:
        raise ConfigError(f"--root {root}: --dataset {dataset} generates its phantoms and reads no folder; "
                          "drop --root, or choose the layout of your data (brats, synapse, transunet, nifti, dicom)")
    if intensity is not None and dataset not in ("brats", "synapse", "nifti", "dicom"):
        raise ConfigError(f"--intensity applies to the brats, synapse, nifti and dicom sources, not to {dataset!r} "
                          "(its intensity is fixed by its format)")
    if dataset in ("demo", "demo-brain"):
        from shared.sources.demo import DemoBrainSource

        return DemoBrainSource()
    if dataset == "demo-abdomen":
        from shared.sources.demo import DemoAbdomenSource

        return DemoAbdomenSource()
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    if root is None:
        raise ConfigError(f"dataset {dataset!r} needs a root folder (--root PATH)")
    if dataset == "brats":
        from shared.sources.brats import BratsSource

        return BratsSource(root, modality=modality, intensity=intensity)
    if dataset == "synapse":
        from shared.sources.synapse import SynapseSource

        return SynapseSource(root, intensity=intensity)
    if dataset == "transunet":
        from shared.sources.transunet import TransUNetSource

        return TransUNetSource(root)
    if dataset == "dicom":
        from shared.sources.dicom_source import DicomSource

        return DicomSource(root, config=config, intensity=intensity)
    from shared.sources.nifti import NiftiSource

    return NiftiSource(root, config=config, intensity=intensity)


def open_described(description: dict[str, Any]) -> Source:
    """Re-open the source a manifest recorded with ``Source.describe()``."""
    options = dict(description.get("options") or {})
    kwargs = {k: options[k] for k in ("modality", "config", "intensity", "spacing") if k in options}
    kwargs.setdefault("spacing", None)  # a manifest without options.spacing was read natively
    return open_source(description["name"], description.get("root"), **kwargs)


__all__ = ["DATASETS", "Source", "open_described", "open_source", "preprocess_raw", "read_nifti"]
