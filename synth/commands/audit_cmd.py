"""``synth verify`` / ``synth info`` / ``synth trace``: audit a built dataset."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shared.cli_support import debug_option


@click.command("verify")
@click.argument("dataset_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--replay", type=int, default=0, show_default=True, metavar="K",
              help="Also regenerate K random samples from their provenance records (re-reading the "
                   "source named in dataset.json) and check they are bit-identical to the stored ones.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed choosing the samples to replay.")
@click.option("--source-root", type=click.Path(path_type=Path), default=None,
              help="Where the source data lives now, if it moved since the build (its files must be "
                   "unchanged: their sha256 is checked against the dataset's fingerprint).")
@click.option("--workers", type=int, default=None,
              help="Processes re-hashing shards and reading source volumes for --replay (default: the number of CPUs).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@debug_option
def verify(dataset_dir: Path, replay: int, seed: int, source_root: Path | None, workers: int | None,
           progress: bool) -> None:
    """Re-hash every shard and sample of DIR against dataset.json and samples.jsonl.

    Prints OK, or the ids of the samples that do not match and exits with status 1.

    \b
    Example:
      synth verify ds/brats150 --replay 20
    """
    from shared.errors import ConfigError
    from synth.audit.verify import verify_dataset

    if replay < 0:
        raise ConfigError(f"--replay must be >= 0, got {replay}")
    from synth.commands.options import resolve_workers

    report = verify_dataset(dataset_dir, replay=replay, seed=seed, source_root=source_root,
                            workers=resolve_workers(workers), progress=progress)
    for line in report.lines()[:50]:
        click.echo(line, err=True)
    if len(report.lines()) > 50:
        click.echo(f"... and {len(report.lines()) - 50} more", err=True)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@click.command("info")
@click.argument("dataset_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--shards", "show_shards", is_flag=True, help="List every shard with its range and size.")
@click.option("--pixels/--no-pixels", default=True, show_default=True,
              help="Run the floating-object ring test on the stored pixels of every sample (reads all shards).")
@debug_option
def info(dataset_dir: Path, as_json: bool, show_shards: bool, pixels: bool) -> None:
    """Summarise DIR: sample counts, class frequencies, shard sizes, exemplars, placement.

    Placement (synthesized datasets): the manifest's `inside` figures (share of each object on
    the background's body), the fallbacks taken, and the floating-object ring test on the stored
    pixels (an object floats when more than half of the pixels 2-4 px outside it are air,
    intensity < 0.04; docs/synthesis.md).

    \b
    Example:
      synth info ds/brats150
    """
    from synth.audit.info import dataset_summary, floating_from_pixels, placement_lines

    s = dataset_summary(dataset_dir)
    if pixels and s["kind"] == "synthesized":
        s["floating_pixels"] = floating_from_pixels(dataset_dir)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"{s['root']}: {s['kind']} dataset of {s['num_samples']} samples, task {s['task']}, "
               f"source {s['source']} ({s['source_root'] or 'generated'}), seed {s['seed']}")
    click.echo(f"shards: {s['num_shards']} x {s['format']} ({s['image_dtype']} images), {s['total_mb']:.1f} MB "
               f"(per shard min {s['shard_mb']['min']:.2f} / mean {s['shard_mb']['mean']:.2f} / "
               f"max {s['shard_mb']['max']:.2f} MB)")
    if show_shards:
        for sh in s["shards"]:
            click.echo(f"  {sh['path']}: samples [{sh['start']}, {sh['start'] + sh['count']}), {sh['mb']:.2f} MB")
    click.echo(f"{'class':<16}{'in % of samples':>16}{'mean pixels':>14}")
    for name, c in s["classes"].items():
        click.echo(f"{name:<16}{100 * c['fraction_of_samples']:>15.1f}%{c['mean_pixels_when_present']:>14.0f}")
    ex = s["exemplars"]
    if ex["count"]:
        per = ex["samples_per_exemplar"]
        click.echo(f"exemplars: {ex['count']} slices from {ex['volumes']} volume(s) (spec {ex['spec']}); "
                   f"background pool {ex['background_pool']} slices, {ex['backgrounds_used']} used")
        if per:
            click.echo(f"samples per exemplar: min {per['min']} / mean {per['mean']:.1f} / max {per['max']}"
                       + (f"; unused: {', '.join(ex['unused'])}" if ex["unused"] else ""))
        if ex["slices_with_class"]:
            click.echo("exemplar slices per class: " + ", ".join(f"{k} {v}" for k, v in ex["slices_with_class"].items()))
        if ex["excluded"]:
            click.echo(f"excluded exemplars: {', '.join(ex['excluded'])}")
    for line in placement_lines(s.get("placement"), s.get("floating_pixels")):
        click.echo(line)
    if s.get("volumes"):
        click.echo(f"volumes: {len(s['volumes'])} (" + ", ".join(f"{v['id']} {v['slices']} slices"
                                                              for v in s["volumes"][:6])
                   + (" ..." if len(s["volumes"]) > 6 else "") + ")")


@click.command("trace")
@click.argument("dataset_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--exemplar", "exemplar", default=None, metavar="CASE:SLICE",
              help="List every sample derived from this exemplar slice (to find the offspring of a "
                   "mislabelled exemplar; rebuild without it with `synth build ... --exclude-exemplar`).")
@click.option("--background", "background", default=None, metavar="CASE:SLICE",
              help="List every sample pasted onto this background slice.")
@click.option("--sample", "sample_id", default=None, metavar="ID",
              help="Print one sample's provenance record: its id (e.g. s000012) or its 0-based number "
                   "in the dataset (e.g. 12), as `synth show --sample`.")
@click.option("--json", "as_json", is_flag=True, help="Print full records as JSON lines instead of ids.")
@debug_option
def trace(dataset_dir: Path, exemplar: str | None, background: str | None, sample_id: str | None,
          as_json: bool) -> None:
    """Follow provenance: the samples made from an exemplar, or one sample's record.

    \b
    Examples:
      synth trace ds/brats150 --exemplar Brats18_2013_3_1:77
      synth trace ds/brats150 --sample s000123
    """
    from shared.errors import ConfigError
    from synth.audit.info import find_sample, trace_exemplar
    from synth.building.jobs import parse_slice_ref

    given = [x for x in (exemplar, background, sample_id) if x is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --exemplar CASE:SLICE, --background CASE:SLICE, --sample ID")
    if sample_id is not None:
        click.echo(json.dumps(find_sample(dataset_dir, sample_id), indent=None if as_json else 2, sort_keys=True))
        return
    text = exemplar if exemplar is not None else background
    ref = parse_slice_ref(text, "--exemplar" if exemplar is not None else "--background")
    records = trace_exemplar(dataset_dir, ref, background=background is not None)
    for rec in records:
        click.echo(json.dumps(rec, sort_keys=True) if as_json else rec["id"])
    what = "exemplar" if exemplar is not None else "background"
    hint = (f"; rebuild without it: synth build ... --exclude-exemplar {text}" if exemplar is not None and records
            and records[0].get("kind") == "synthesized" else "")
    click.echo(f"{len(records)} sample(s) derived from {what} {text}{hint}", err=True)

