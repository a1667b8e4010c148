"""``synth select``: choose exemplar slices and the background pool, write them as a JSON list."""
from __future__ import annotations

from pathlib import Path

import click

from shared.cli_support import debug_option
from synth.commands.options import DATASET_CHOICES, spacing_option


@click.command("select")
@click.option("--dataset", required=True, type=click.Choice(DATASET_CHOICES),
              help="Source layout: brats (BraTS 2018 HGG|LGG folders), synapse (RawData/Training "
                   "img/label), transunet (train_npz / test_vol_h5), nifti (images/ + labels/ with "
                   "a config), dicom (<case>/image/ DICOM series + label.seg.dcm or label.nii.gz), "
                   "demo-brain / demo-abdomen (procedural phantoms; demo = demo-brain).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (not needed for the demo sources).")
@click.option("--modality", type=click.Choice(["t1", "t1ce", "t2", "flair"]), default="flair",
              show_default=True, help="BraTS modality to read.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="nifti / dicom source config (classes, intensity preset); default ROOT/source.json.")
@click.option("--intensity", default=None, metavar="PRESET",
              help="brats / synapse / nifti / dicom: the intensity preset to read the images with (mri-slice-p99.5, "
                   "mri-slice-minmax (the brats default), or JSON; see synth build --help). It decides "
                   "the content test of the background pool, so the list records it and `synth build "
                   "--exemplar-list` reads the images the same way.")
@spacing_option(" The list records it; `synth build --exemplar-list` reads the images at the same spacing.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="train", show_default=True,
              help="Which cases feed exemplars and backgrounds: the training part of the split, "
                   "the test part, or every case.")
@click.option("--split-file", type=click.Path(path_type=Path), default=None,
              help='Your own split, JSON {"train": [...], "test": [...]} of case ids '
                   "(default: the dataset's recorded split, see docs/sources.md).")
@click.option("--exemplars", "spec", required=True, metavar="N|P%",
              help="How many exemplar slices: a count (150) or a percentage of the eligible "
                   "slices (1%, 0.5%).")
@click.option("--min-pixels", type=int, default=10, show_default=True,
              help="A slice is eligible when it holds at least this many foreground pixels "
                   "(multi-organ: an organ counts as present from this many pixels).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--pool-size", type=int, default=None, metavar="N",
              help="Background pool limit: above N qualifying slices, a seeded random sample of N "
                   "(default 4096; 0 = no limit).")
@click.option("--workers", type=int, default=None,
              help="Processes reading volumes (default: the number of CPUs). The list does not depend on it.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE.json",
              help="Where to write the exemplar list.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar while scanning volumes.")
@debug_option
def select(dataset: str, root: Path | None, modality: str, config: Path | None, intensity: str | None,
           spacing: str | None, split: str,
           split_file: Path | None, spec: str, min_pixels: int, seed: int, pool_size: int | None,
           workers: int | None, out: Path, overwrite: bool, progress: bool) -> None:
    """Choose exemplar slices (and the background pool) and write them to FILE.json.

    Single-target tasks (tumour): a seeded random choice among slices with at least
    --min-pixels foreground pixels. Multi-organ tasks: the paper's "most organs" rule
    (N = 1: best slice overall; N < volumes: N volumes by seed, best slice of each;
    N = k x volumes: k best of each). Reuse the list with `synth build --exemplar-list FILE.json`.

    Example: synth select --dataset brats --root BraTS2018 --exemplars 1% --out brats_1pct.json
    """
    from shared.cli_support import check_writable
    from shared.errors import ConfigError, DataError
    from shared.sources import open_source
    from shared.splits import resolve_split
    from synth.commands.options import parse_intensity, parse_spacing_option, resolve_workers
    from synth.selection.background_pool import DEFAULT_POOL_SIZE
    from synth.selection.scanning import stream_scan
    from synth.selection.exemplar_list import select_exemplars
    from synth.selection.rules import ExemplarSpec

    exemplar_spec = ExemplarSpec.parse(spec)  # fail on a bad spec before reading any data
    if pool_size is not None and pool_size < 0:
        raise ConfigError(f"--pool-size must be 0 (no limit) or more, got {pool_size}")
    if min_pixels < 1:
        raise ConfigError(f"--min-pixels {min_pixels}: must be at least 1")
    pool_size = DEFAULT_POOL_SIZE if pool_size is None else pool_size
    n_workers = resolve_workers(workers)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: output folder does not exist")
    check_writable(out.parent, "--out")  # before scanning every volume, not after
    source = open_source(dataset, root, modality=modality, config=config, intensity=parse_intensity(intensity),
                         spacing=parse_spacing_option(spacing, dataset))
    cases = resolve_split(source, split, split_file)
    # streaming scan: one volume at a time per worker, only per-slice numbers kept
    scan = stream_scan(source, cases, workers=n_workers, progress=progress)
    result = select_exemplars(source, cases, exemplar_spec, seed, min_pixels, split=split, scans=scan.scans,
                              file_hashes=scan.file_hashes, pool_size=pool_size)
    if split_file is not None:
        result.selection["split_file"] = str(split_file.resolve())
    result.to_json(out, overwrite=overwrite)
    totals = result.class_totals()
    classes = ", ".join(f"{name} {totals.get(name, 0)} px" for name in source.class_names[1:] if name in totals)
    click.echo(f"{len(result.exemplars)} exemplars ({result.rule}, {result.selection['eligible_slices']} "
               f"eligible slices in {len(cases)} case(s), split {split}); classes: {classes}; "
               f"background pool {len(result.background_pool)} slices -> {out}")
