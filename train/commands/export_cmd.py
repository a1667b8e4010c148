"""`train export`: a finished run's adapter and card (train/adapters.py) for models/NAME."""
from __future__ import annotations

import click

from shared.cli_support import debug_option


@click.command("export")
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False),
              help="A finished `train fit` run directory.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Adapter folder to write (adapter.pt + model.json), e.g. models/brats-flair-wt-0.5pct.")
@click.option("--eval", "evals", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="`train eval` output folders whose scores go on the card (repeatable).")
@click.option("--command", "commands", multiple=True,
              help="The commands that made the dataset and the run, recorded on the card (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter folder.")
@debug_option
def export(run, out, evals, commands, overwrite) -> None:
    """Publish what fine-tuning changed: LoRA and the trained tensors in float16 (<= 5 MiB) and a
    card with the base weights' sha256, the exemplars and their hash, the dataset's content hash,
    the commands, commit, device, precision, seed, steps and the scores.

    Apply it with `train eval|predict --model lite_medsam --adapter OUT`.
    """
    from train.adapters import export_adapter

    path = export_adapter(run, out, evals=evals, commands=commands, overwrite=overwrite)
    click.echo(f"wrote {path}/adapter.pt and {path}/model.json")
