"""`train predict`."""
from __future__ import annotations

import click

from shared.cli_support import debug_option


@click.command("predict")
@click.option("--run", "run", required=True, type=click.Path(file_okay=False),
              help="Run directory written by `train fit`.")
@click.option("--run-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Use this checkpoint of the run instead of checkpoints/last.pt.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Official SAM weights, overriding the base weights path recorded in the run (vit_* runs).")
@click.option("--image", required=True, type=click.Path(dir_okay=False),
              help="The scan to segment (NIfTI, raw intensities as acquired).")
@click.option("--points", type=click.Path(dir_okay=False), default=None,
              help='Clicked points: JSON {"class": [[i, j, k], ...], ...} in the NIfTI\'s voxel index '
                   "space (i column, j row, k slice). Required unless the run is promptless.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Label NIfTI to write (*.nii.gz); its folder is created if needed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Slices per encoder call.")
@click.option("--num-threads", type=int, default=None,
              help="torch CPU threads (default: one per CPU; waiting threads sleep, so a busy machine "
                   "does not slow it down much).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@debug_option
def predict(run, run_checkpoint, checkpoint, image, points, out, device, batch_size, num_threads,
            overwrite) -> None:
    """Segment a new scan from clicked points with a trained run.

    The scan is preprocessed like the run's training data; every slice with a click is segmented
    (each class from all of its clicks on that slice) and the result is written as a uint8 label
    NIfTI (values = the run's class indices) with the scan's affine and header. See
    docs/evaluation.md for the points format.
    """
    from pathlib import Path

    from train import precheck

    # Paths first, before the seconds of importing torch and loading the model.
    precheck.check_run_dir(run, run_checkpoint)
    precheck.check_file(checkpoint, "--checkpoint", "SAM checkpoint")
    precheck.check_nifti_in(image)
    precheck.check_json_file(points, "--points")
    precheck.check_nifti_out(out, overwrite=overwrite)
    if num_threads is not None and num_threads < 0:
        raise click.BadParameter("must be >= 0", param_hint="--num-threads")

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
                           overwrite=overwrite)
    except BaseException:
        for p in made:  # innermost first; only folders this command made and left empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    counts = ", ".join(f"{k} {v}" for k, v in res.voxels.items())
    click.echo(f"{res.out}: {res.slices} slice(s) segmented in {res.seconds:.1f} s; voxels: {counts}")
