"""Options and option helpers shared by the synth commands (`select`, `build`, `pack`, `verify`):
the source options, the output options, and how --workers and --intensity are read."""
from __future__ import annotations

import os
from pathlib import Path

import click

DATASET_CHOICES = ["brats", "synapse", "transunet", "nifti", "dicom", "demo", "demo-brain", "demo-abdomen"]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def source_options(split_default: str, *, from_list: bool = False):
    """--dataset/--root/--modality/--config/--split/--split-file, named exactly as in `synth select`.

    ``from_list``: --dataset may be left out when --exemplar-list names it (build)."""
    def deco(f):
        opts = [
            click.option("--dataset", required=not from_list, type=click.Choice(DATASET_CHOICES),
                         help="Source layout: brats (BraTS 2018 HGG|LGG folders), synapse (RawData/Training "
                              "img/label), transunet (train_npz / test_vol_h5), nifti (images/ + labels/ with "
                              "a config), dicom (<case>/image/ DICOM series + label.seg.dcm or "
                              "label.nii.gz), demo-brain / demo-abdomen (procedural phantoms; demo = demo-brain)."
                              + (" Default with --exemplar-list: the dataset the list records." if from_list else "")),
            click.option("--root", type=click.Path(path_type=Path), default=None,
                         help="Dataset folder (the demo sources take none)."
                              + (" Default with --exemplar-list: the root the list records." if from_list else "")),
            click.option("--modality", type=click.Choice(["t1", "t1ce", "t2", "flair"]), default="flair",
                         show_default=True, help="BraTS modality to read."),
            click.option("--config", "source_config", type=click.Path(path_type=Path), default=None,
                         help="nifti / dicom source config (classes, intensity preset); default ROOT/source.json."),
            click.option("--intensity", default=None, metavar="PRESET",
                         help="brats / synapse / nifti / dicom: replace the source's intensity preset, by "
                              "name (mri-slice-p99.5: per-slice min-max with the top at the 99.5th percentile "
                              "of the brain, robust to outlier voxels; mri-slice-minmax: the paper's rule, "
                              "the brats default; mr-medsam / ct-medsam: LiteMedSAM's input contract) or as JSON. Recorded in dataset.json; train eval and "
                              "train predict apply the same preset (docs/sources.md)."),
            spacing_option(" Default with --exemplar-list: the spacing the list records." if from_list else ""),
            click.option("--split", type=click.Choice(["train", "test", "all"]), default=split_default,
                         show_default=True, help="Which cases to read: the training part of the dataset's "
                                                 "split, the test part, or every case."),
            click.option("--split-file", type=click.Path(path_type=Path), default=None,
                         help='Your own split, JSON {"train": [...], "test": [...]} of case ids '
                              "(default: the dataset's recorded split, see docs/sources.md)."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def spacing_option(extra: str = ""):
    """--spacing MM|native: the in-plane pixel size every slice is resampled to (shared.spacing)."""
    return click.option("--spacing", default=None, metavar="MM|native",
                        help="Resample every slice to MM x MM pixels in-plane (images: area when shrinking, "
                             "else bilinear; labels: nearest, no class of a slice lost); native: as stored. "
                             "Default: the dataset's (native for every dataset, shared/spacing.py). "
                             "Recorded in dataset.json (source.options.spacing)." + extra)


def parse_spacing_option(text: str | None, dataset: str | None):
    """--spacing: None -> the dataset's default; ``native`` -> None; else mm (one-line ConfigError)."""
    from shared.spacing import default_spacing, parse_spacing

    if text is None:
        return default_spacing(dataset) if dataset else None
    return parse_spacing(text)


def output_options(dtype_default: str):
    """--out/--format/--dtype/--shard-size/--workers/--overwrite/--resume/--progress (build, pack)."""
    def deco(f):
        opts = [
            click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                         help="Dataset folder to write (shards/, dataset.json, samples.jsonl)."),
            click.option("--format", "fmt", type=click.Choice(["zarr", "hdf5"]), default="zarr", show_default=True,
                         help="Shard format: Zarr v3 groups (shards/shard-00000.zarr) or HDF5 files (.h5)."),
            click.option("--dtype", "image_dtype", type=click.Choice(["float16", "float32"]), default=dtype_default,
                         show_default=True, help="Stored image dtype (labels are always uint8)."),
            click.option("--shard-size", type=int, default=256, show_default=True,
                         help="Samples per shard (the last shard may be shorter). Also the unit of work "
                              "of a worker and of --part."),
            click.option("--workers", type=int, default=None,
                         help="Worker processes (default: the number of CPUs). The output does not depend on it."),
            click.option("--overwrite", is_flag=True,
                         help="Replace an existing dataset in DIR (only dataset files are removed)."),
            click.option("--resume", is_flag=True,
                         help="Continue an interrupted build into DIR with the same options: shards whose "
                              "sha256 checks are kept, the rest rebuilt."),
            click.option("--progress/--no-progress", default=True, show_default=True,
                         help="Show a progress bar (samples/s) while building."),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return deco


def resolve_workers(workers: int | None) -> int:
    """--workers: the number given (at least 1), or :func:`default_workers` when left out."""
    from shared.errors import ConfigError

    if workers is None:
        return default_workers()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    return workers


def parse_intensity(text: str | None):
    """--intensity: a preset name, or a JSON object; validated by the source."""
    from shared.intensity import parse_preset_option

    return parse_preset_option(text)


def abs_path(p: Path | None) -> str | None:
    """An option's path made absolute (None stays None), as recorded in dataset.json."""
    return None if p is None else str(Path(p).resolve())
