"""``synth show`` / ``synth sheet``: look at a built dataset (one sample in detail, or a contact sheet)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from shared.cli_support import debug_option


def _out_option(f):
    return click.option("--out", required=True, type=click.Path(path_type=Path), metavar="F.png",
                        help="PNG file to write (folders are created; an existing file is replaced).")(f)


@click.command("show")
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--sample", "sample", required=True, metavar="ID",
              help="Sample id as in samples.jsonl (e.g. s000012) or its 0-based number in the dataset "
                   "(e.g. 12; the record's line in samples.jsonl), as `synth trace --sample`.")
@_out_option
@click.option("--size", type=click.IntRange(64, 1024), default=256, show_default=True,
              help="Panel size in pixels (the longer side of each slice).")
@click.option("--source-root", type=click.Path(path_type=Path), default=None,
              help="Where the source data lives now, if it moved since the build.")
@debug_option
def show(directory: Path, sample: str, out: Path, size: int, source_root: Path | None) -> None:
    """Draw one sample of dataset DIR: its exemplar slice(s) with their labels, the background slice,
    the result with its label overlaid, and every recorded transform parameter.

    The exemplar and background slices are re-read from the source recorded in DIR/dataset.json;
    if that source cannot be opened any more, the picture shows the sample and its parameters only
    (with a warning).

    Example: synth show ds/brats150 --sample s000012 --out s12.png
    """
    import cv2

    from shared import open_dataset
    from synth.audit import visual

    ds = open_dataset(directory)
    i = _resolve_sample(ds, sample, directory)
    item = ds[i]
    rec = _read_record(directory, i)
    names = tuple(ds.class_names)
    synth_rec = rec.get("synthesis") if rec else None
    title = f"{item['id']}  ({directory.name})"
    if synth_rec is None:
        src = (rec or {}).get("source")
        lines = [f"{item['id']}: kind {ds.info.get('kind')}, no synthesis record"]
        if src:
            lines.append(f"source slice {src.get('volume')}[{src.get('slice')}]")
        panel = visual.titled(visual.overlay(item["image"], item["label"], size=size), title)
        fig = visual.vstack([panel, visual.text_panel(lines, panel.shape[1])])
    else:
        description = dict(ds.info.get("source") or {})
        if source_root is not None:
            description["root"] = str(source_root)
        exemplars, background, warning = _source_slices(description, synth_rec)
        if warning:
            click.echo(f"warning: {warning}; drawing the sample and its parameters only", err=True)
        from shared.orientation import dataset_affine, display_orientation, orient

        # radiological view, like `synth sheet` and `train eval --overlays`
        how = display_orientation(dataset_affine(ds.info, source_root))
        if how is not None:
            title += "  (radiological view)"
        exemplars = [(t, *orient([img, lab], [], how)[0]) for t, img, lab in exemplars]
        background = (background[0], orient([background[1]], [], how)[0][0])
        (image, label), _ = orient([item["image"], item["label"]], [], how)
        fig = visual.show_figure(exemplars, background, (title, image, label), synth_rec, names, size)
    _write_png(cv2, out, fig)
    click.echo(f"wrote {out} ({fig.shape[1]}x{fig.shape[0]})")


@click.command("sheet")
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@_out_option
@click.option("--n", "n", type=click.IntRange(1, 400), default=24, show_default=True,
              help="How many samples to draw (all of them if the dataset is smaller).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random choice of samples.")
@click.option("--cols", type=click.IntRange(1, 40), default=6, show_default=True, help="Samples per row.")
@click.option("--size", type=click.IntRange(48, 512), default=180, show_default=True,
              help="Panel size in pixels (the longer side of each slice).")
@debug_option
def sheet(directory: Path, out: Path, n: int, seed: int, cols: int, size: int) -> None:
    """Draw a contact sheet of random samples of dataset DIR with their labels overlaid
    (one colour per class, legend at the bottom), like the paper's Figure 1.

    Example: synth sheet ds/brats150 --n 24 --out sheet.png
    """
    import cv2
    import numpy as np

    from shared import open_dataset
    from synth.audit import visual

    ds = open_dataset(directory)
    total = len(ds)
    rng = np.random.default_rng(seed)
    picks = sorted(int(i) for i in rng.choice(total, size=min(n, total), replace=False))
    from shared.orientation import dataset_affine, display_orientation, orient

    how = display_orientation(dataset_affine(ds.info))  # radiological view when the source says how
    samples = []
    for i in picks:
        item = ds[i]
        (image, label), _ = orient([item["image"], item["label"]], [], how)
        samples.append((str(item["id"]), image, label))
    fig = visual.sheet_figure(samples, tuple(ds.class_names), cols=cols, size=size)
    view = ", radiological view (anterior up, patient's right on the left)" if how is not None else ""
    header = visual.text_panel([f"{directory}: {len(picks)} of {total} samples (seed {seed}), "
                                f"task {ds.task}, kind {ds.info.get('kind')}{view}"], fig.shape[1])
    fig = visual.vstack([header, fig], gap=0)
    _write_png(cv2, out, fig)
    click.echo(f"wrote {out} ({fig.shape[1]}x{fig.shape[0]}, {len(picks)} samples)")


# ---------------------------------------------------------------------------------------------

def _resolve_sample(ds: Any, sample: str, directory: Path) -> int:
    from shared.errors import DataError

    ids = list(ds.ids)
    if sample in ids:
        return ids.index(sample)
    if sample.isdigit():
        i = int(sample)
        if i < len(ds):
            return i
        raise DataError(f"{directory}: sample number {i} out of range (dataset has {len(ds)} samples)")
    raise DataError(f"{directory}: no sample with id {sample!r} (give an id like {ids[0] if ids else 'none'} "
                    f"or a 0-based sample number below {len(ds)})")


def _read_record(directory: Path, i: int) -> dict | None:
    """Record i of DIR/samples.jsonl (None if the file is missing)."""
    from shared.errors import DataError

    path = directory / "samples.jsonl"
    if not path.exists():
        return None
    with path.open() as f:
        for j, line in enumerate(f):
            if j == i:
                try:
                    return json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {j + 1} is not valid JSON ({exc.msg})") from None
    raise DataError(f"{path}: has no record for sample {i}")


def _source_slices(description: dict, rec: dict) -> tuple[list, tuple, str | None]:
    """(exemplar panels, background panel, warning) re-read from the dataset's recorded source."""
    import numpy as np

    from shared.errors import ExemplarSamError
    from shared.sources import open_described

    refs = []
    for obj in rec["objects"]:
        ref = (obj["ref"]["volume"], int(obj["ref"]["slice"]))
        if ref not in refs:
            refs.append(ref)
    bg = (rec["background"]["ref"]["volume"], int(rec["background"]["ref"]["slice"]))
    shape = tuple(rec["shape"])
    try:
        source = open_described(description)
        volumes: dict[str, Any] = {}

        def vol(case: str):
            if case not in volumes:
                volumes[case] = source.load(case)
            return volumes[case]

        exemplars = [(f"exemplar {c}[{k}]", vol(c).image[k], vol(c).label[k]) for c, k in refs]
        from synth.synthesis.background import background_image

        background = (f"background {bg[0]}[{bg[1]}]", background_image(vol(bg[0]).image[bg[1]], vol(bg[0]).label[bg[1]]))
        return exemplars, background, None
    except (ExemplarSamError, OSError, KeyError, IndexError) as exc:
        blank = np.zeros(shape, np.float32)
        why = f"cannot re-read the source slices ({type(exc).__name__}: {exc})"
        return ([("exemplar (source unavailable)", blank, np.zeros(shape, np.uint8))],
                ("background (source unavailable)", blank), " ".join(why.split()))


def _write_png(cv2: Any, out: Path, fig: Any) -> None:
    from shared.errors import DataError
    from shared.fileio import atomic_write_bytes

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DataError(f"{out}: the picture is written as PNG, give a .png file name")
    ok, encoded = cv2.imencode(".png", fig)
    if not ok:
        raise DataError(f"{out}: could not encode the PNG")
    try:
        atomic_write_bytes(out, encoded.tobytes())
    except OSError as exc:
        raise DataError(f"{out}: could not write the PNG ({exc.strerror or exc})") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through the `synth` command")
