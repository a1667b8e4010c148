"""``synth build`` / ``synth pack`` / ``synth merge``: write datasets as Zarr/HDF5 shards + manifests."""
from __future__ import annotations

import json
from pathlib import Path

import click

from shared.cli_support import debug_option
from synth.commands.options import (abs_path, output_options, parse_intensity, parse_spacing_option, resolve_workers,
                                    source_options)


@click.command("build")
@source_options("train", from_list=True)
@click.option("--exemplars", "spec", default=None, metavar="N|P%",
              help="Select exemplars here: a count (150) or a percentage of the eligible slices (1%), "
                   "by the rule of `synth select`. Give this or --exemplar-list.")
@click.option("--exemplar-list", type=click.Path(path_type=Path), default=None, metavar="FILE.json",
              help="Use the exemplars (and background pool) of a `synth select` output, or a hand-written "
                   "list of {volume, slice}.")
@click.option("--no-verify-hashes", is_flag=True,
              help="Use an --exemplar-list even when the image/label files differ from the sha256 it "
                   "recorded (by default that is an error naming the changed file).")
@click.option("--min-pixels", type=int, default=10, show_default=True,
              help="Selection: a slice is eligible when it holds at least this many foreground pixels.")
@click.option("--exclude-exemplar", "exclude", multiple=True, metavar="CASE:SLICE",
              help="Drop this exemplar before synthesis (repeatable), e.g. one found mislabelled with "
                   "`synth trace`.")
@click.option("--num-samples", type=int, default=None,
              help="Samples to synthesize (default: 4500 for brats and single-target sources, 1800 for "
                   "synapse/transunet and multi-organ sources, whatever the exemplar count).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthesis (sample i uses the stream (seed, i)) and of the exemplar selection.")
@click.option("--synthesis-config", type=click.Path(path_type=Path), default=None, metavar="FILE.json",
              help="Override the transform ranges of synth/configs/synthesis.json (any subset of keys); "
                   "the full resolved config is recorded in dataset.json.")
@click.option("--recipe", type=click.Choice(["extended", "paper"]), default=None,
              help="Synthesis recipe (default: extended). paper: Eq. 1-3 literally (objects of the one base "
                   "exemplar, background drawn at random from the pool, T = blur, intensity, scale, flip, "
                   "rotation, objects keep their position); extended: the project's (best-fitting background, "
                   "organ mixing, translation, gamma). Both keep every object on the body/brain "
                   "(docs/synthesis.md). --synthesis-config overrides either.")
@click.option("--no-synthesis", is_flag=True,
              help="Pack the exemplar slices themselves (the paper's 'w/o data synthesis' ablation); "
                   "ids e0000, e0001, ...")
@click.option("--all-slices", is_flag=True,
              help="Pack every slice of the split (the paper's 'Full Set' upper bound); ids CASE:SLICE. "
                   "No exemplars needed.")
@click.option("--pool-size", type=int, default=None, metavar="N",
              help="Background pool limit: when more slices qualify as backgrounds, a seeded random "
                   "sample of N of them is used (chosen from the labels, so each volume is read once "
                   "and only the sampled slices are kept: memory does not grow with the number of "
                   "patients). 0 = no limit. Default 4096 (see BENCHMARKS.md); recorded in dataset.json.")
@click.option("--part", default=None, metavar="i/n",
              help="Build only part i of n (shard-aligned, 0-based), e.g. one task of a Slurm job array; "
                   "join the parts with `synth merge`.")
@output_options("float16")
@debug_option
def build(dataset, root, modality, source_config, intensity, spacing, split, split_file, spec, exemplar_list,
          no_verify_hashes, min_pixels, exclude, num_samples, seed, synthesis_config, recipe, no_synthesis,
          all_slices, pool_size, part, out, fmt, image_dtype, shard_size,
          workers, overwrite, resume, progress) -> None:
    """Synthesize a training set from a few exemplars into shards with provenance manifests.

    Each sample pastes transformed exemplar objects (tumour / organs) onto a transformed background
    slice. Output: DIR/shards/ (Zarr v3 or HDF5; image float16, label uint8), DIR/dataset.json
    (config, seed, source fingerprint, exemplars, shard hashes) and DIR/samples.jsonl (one
    provenance record per sample). Sample i depends only on (seed, i, exemplars, background pool,
    config): --workers 1 and --workers 8 write identical bytes.

    \b
    Examples:
      synth build --dataset brats --root BraTS2018 --split all --exemplars 150 --out ds/brats150
      synth build --dataset synapse --root Synapse --exemplars 1 --format hdf5 --out ds/syn1
      synth build --dataset demo-brain --exemplars 20 --out ds/demo
      synth build ... --part 3/8 --out parts/p3     # then: synth merge parts/p* --out ds/full
    """
    from shared.errors import ConfigError
    from synth.building.run import run_job
    from synth.building.spec import BuildConfig, Part
    from synth.building.jobs import prepare_exemplar_job, prepare_slices_job
    from synth.synthesis.config import DEFAULT_RECIPE

    if no_synthesis and all_slices:
        raise ConfigError("--no-synthesis and --all-slices exclude each other")
    kind = "all-slices" if all_slices else "exemplars" if no_synthesis else "synthesized"
    if all_slices and (spec or exemplar_list or exclude):
        raise ConfigError("--all-slices packs every slice; --exemplars/--exemplar-list/--exclude-exemplar do not apply")
    if dataset is None:
        dataset, root, modality, source_config = _source_from_list(exemplar_list, root, modality, source_config)
    preset = parse_intensity(intensity)
    if exemplar_list is not None:
        preset = _intensity_for_list(exemplar_list, preset, dataset, root, modality, source_config)
    mm = parse_spacing_option(spacing, dataset)
    if exemplar_list is not None:
        mm = _spacing_for_list(exemplar_list, spacing, mm)
    if kind != "synthesized" and (num_samples is not None or synthesis_config is not None or recipe is not None):
        raise ConfigError(f"--num-samples, --recipe and --synthesis-config apply to synthesis, not to "
                          f"{'--all-slices' if all_slices else '--no-synthesis'}")
    if kind != "all-slices" and (spec is None) == (exemplar_list is None):
        raise ConfigError("give exactly one of --exemplars N|P% and --exemplar-list FILE.json")
    part_ = Part.parse(part)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    n_workers = resolve_workers(workers)
    cfg = BuildConfig(kind=kind, dataset="demo-brain" if dataset == "demo" else dataset, root=abs_path(root),
                      modality=modality, source_config=abs_path(source_config), intensity=preset, split=split,
                      split_file=abs_path(split_file), exemplars=spec, exemplar_list=abs_path(exemplar_list),
                      min_pixels=min_pixels if kind != "all-slices" else None,
                      exclude_exemplars=sorted(exclude), num_samples=num_samples, seed=seed,
                      shard_size=shard_size, format=fmt, image_dtype=image_dtype,
                      synthesis_config=abs_path(synthesis_config), recipe=recipe or DEFAULT_RECIPE, spacing=mm)
    if pool_size is not None:
        cfg.pool_size = pool_size
    if kind != "synthesized":
        cfg.pool_size = None  # no background pool
    cfg.check()
    _check_out_early(out, overwrite, resume)
    if kind == "all-slices":
        job = prepare_slices_job(cfg, out, workers=n_workers, progress=progress)
    else:
        if no_verify_hashes and exemplar_list is None:
            raise ConfigError("--no-verify-hashes applies to --exemplar-list only")
        job = prepare_exemplar_job(cfg, out, workers=n_workers, progress=progress,
                                   verify_hashes=not no_verify_hashes)
    summary = run_job(job, workers=n_workers, part=part_, overwrite=overwrite, resume=resume, progress=progress)
    click.echo(summary.line())
    if kind == "synthesized":
        from synth.audit.info import build_summary_lines

        for line in build_summary_lines(out, summary.placement):
            click.echo(line)


def _source_from_list(exemplar_list: Path | None, root: Path | None, modality: str,
                      source_config: Path | None) -> tuple[str, Path | None, str, Path | None]:
    """--dataset/--root/--modality/--config from the source an exemplar list records (flags win)."""
    from shared.errors import ConfigError
    from shared.fileio import read_json

    if exemplar_list is None:
        raise ConfigError("give --dataset (or --exemplar-list FILE.json, whose recorded dataset is then used)")
    data = read_json(exemplar_list, what="exemplar list")
    described = data.get("dataset") if isinstance(data, dict) else None
    if not isinstance(described, dict) or not described.get("name"):
        raise ConfigError(f"{exemplar_list}: the list does not record its dataset; give --dataset (and --root)")
    ctx = click.get_current_context()
    options = described.get("options") or {}
    name = str(described["name"])
    if root is None and described.get("root") is not None:
        root = Path(described["root"])
        if not root.exists():
            raise ConfigError(f"{exemplar_list}: the list's dataset root {root} does not exist (moved?); "
                              "give --root NEW_FOLDER")
    if ctx.get_parameter_source("modality") is click.core.ParameterSource.DEFAULT and "modality" in options:
        modality = str(options["modality"])
    if source_config is None and options.get("config"):
        source_config = Path(options["config"])
    click.echo(f"{exemplar_list}: dataset {name}" + (f", root {root}" if root else "")
               + (f", modality {modality}" if name == "brats" else ""), err=True)
    return name, root, modality, source_config


def _intensity_for_list(exemplar_list: Path, preset: str | dict | None, dataset: str, root: Path | None,
                        modality: str, source_config: Path | None) -> str | dict | None:
    """The intensity preset of a build from an exemplar list: the one the list was made with (its
    background pool's content test depended on it) when --intensity is not given; a ConfigError
    when --intensity names another. Lists without a recorded preset, or with the source's default,
    leave the build as it was."""
    from shared.errors import ConfigError, DataError
    from shared.fileio import read_json
    from shared.intensity import validate_preset
    from shared.sources import open_source

    try:
        data = read_json(exemplar_list, what="exemplar list")
    except (DataError, RecursionError):
        return preset  # the list's own validation (prepare_exemplar_job) reports what is wrong
    described = data.get("dataset") if isinstance(data, dict) else None
    recorded = described.get("intensity") if isinstance(described, dict) else None
    if not recorded or not isinstance(recorded, (str, dict)):
        return preset
    recorded = validate_preset(recorded, f"{exemplar_list}: dataset.intensity")
    if preset is not None:
        given = validate_preset(preset, "--intensity")
        if given != recorded:
            raise ConfigError(f"{exemplar_list}: the list was made with intensity {json.dumps(recorded)}, "
                              f"--intensity gives {json.dumps(given)}; its background pool depends on it: "
                              f"drop --intensity, or make a new list with synth select --intensity")
        return preset
    default = open_source("demo-brain" if dataset == "demo" else dataset, root, modality=modality,
                          config=source_config).intensity
    if validate_preset(dict(default)) == recorded:
        return None  # the source's own preset: nothing to override (and nothing new recorded)
    click.echo(f"{exemplar_list}: reading the images with the list's intensity preset {json.dumps(recorded)}",
               err=True)
    return recorded


def _spacing_for_list(exemplar_list: Path, given: str | None, mm: float | None) -> float | None:
    """The in-plane spacing of a build from an exemplar list: the list's (its pixel counts and
    background pool were computed at it) when --spacing is not given; a ConfigError when
    --spacing names another."""
    from shared.errors import ConfigError
    from shared.fileio import read_json
    from shared.spacing import parse_spacing, spacing_record

    data = read_json(exemplar_list, what="exemplar list")
    described = data.get("dataset") if isinstance(data, dict) else None
    options = (described.get("options") or {}) if isinstance(described, dict) else {}
    recorded = parse_spacing(options.get("spacing"), f"{exemplar_list}: dataset.options.spacing")
    if given is None:
        if recorded is not None:
            click.echo(f"{exemplar_list}: reading the images at the list's spacing {recorded:g} mm", err=True)
        return recorded
    if mm != recorded:
        raise ConfigError(f"{exemplar_list}: the list was made at spacing {spacing_record(recorded)}, --spacing gives "
                          f"{spacing_record(mm)}; its pixel counts and background pool depend on it: drop "
                          "--spacing, or make a new list with synth select --spacing")
    return mm


def _check_out_early(out: Path, overwrite: bool, resume: bool) -> None:
    """Fail before reading any data when DIR obviously cannot be used (run_job checks again, locked)."""
    from shared.errors import DataError
    from shared.locks import LOCK_FILE

    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite and not resume and any(e.name != LOCK_FILE for e in out.iterdir()):
        raise DataError(f"{out}: already exists and is not empty (use --overwrite to replace it, "
                        f"or --resume to continue an interrupted build)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"{out}: cannot create the output folder ({parent} is a file)")


@click.command("pack")
@source_options("test")
@output_options("float32")
@debug_option
def pack(dataset, root, modality, source_config, intensity, spacing, split, split_file, out, fmt, image_dtype, shard_size, workers,
         overwrite, resume, progress) -> None:
    """Pack whole volumes (default: the test split) into shards for `train eval`.

    One sample per slice, in slice order, id CASE:SLICE; dataset.json lists each volume's sample
    range, slice indices, spacing, affine and shape, so evaluation from DIR (`open_dataset(DIR)
    .volume_arrays(v)`) equals evaluation from the source folder. Images are float32 by default,
    the exact preprocessed values.

    \b
    Example:
      synth pack --dataset synapse --root Synapse --split test --out ds/synapse_test
    """
    from synth.building.run import run_job
    from synth.building.spec import BuildConfig
    from synth.building.jobs import prepare_slices_job

    if resume and overwrite:
        from shared.errors import ConfigError

        raise ConfigError("--resume and --overwrite exclude each other")
    n_workers = resolve_workers(workers)
    cfg = BuildConfig(kind="volumes", dataset="demo-brain" if dataset == "demo" else dataset, root=abs_path(root),
                      modality=modality, source_config=abs_path(source_config), intensity=parse_intensity(intensity), split=split,
                      split_file=abs_path(split_file), shard_size=shard_size, format=fmt, image_dtype=image_dtype,
                      spacing=parse_spacing_option(spacing, dataset))
    cfg.check()
    _check_out_early(out, overwrite, resume)
    job = prepare_slices_job(cfg, out, workers=n_workers, progress=progress)
    summary = run_job(job, workers=n_workers, overwrite=overwrite, resume=resume, progress=progress)
    click.echo(summary.line().replace("built", "packed", 1))


@click.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Dataset folder to write the joined dataset to.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in DIR.")
@click.option("--move", is_flag=True, help="Move the shards out of the part folders instead of copying them.")
@debug_option
def merge(parts, out, overwrite, move) -> None:
    """Join the parts of a dataset built with `synth build --part i/n` into one dataset.

    The parts must come from the same command (same config, seed, exemplars, source files) and
    together cover every sample exactly once; each shard's sha256 is checked before it is copied.
    The result is byte-identical to a build without --part.

    \b
    Example:
      synth merge parts/p0 parts/p1 parts/p2 parts/p3 --out ds/brats150
    """
    from synth.building.merge import merge_parts

    summary = merge_parts(list(parts), out, overwrite=overwrite, move=move)
    click.echo(f"merged {len(parts)} part(s): {summary.num_samples} samples, "
               f"{summary.bytes_written / 1e6:.1f} MB in {summary.seconds:.2f} s -> {out}")
