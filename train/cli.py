"""``train``: the decoupled trainer (LoRA fine-tuning of SAM on shards, evaluation, reports)."""
from __future__ import annotations

import click

from shared.cli_support import DEBUG_HELP, LazyGroup, run_cli

COMMANDS = {
    "fit": "train.commands.fit_cmd:fit",
    "pretrain": "train.commands.pretrain_cmd:pretrain",
    "eval": "train.commands.eval_cmd:eval_",
    "report": "train.commands.eval_cmd:report",
    "predict": "train.commands.predict_cmd:predict",
    "export": "train.commands.export_cmd:export",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, name="train",
             epilog=f"--debug: {DEBUG_HELP}")
@click.version_option(package_name="exemplar-sam")
def cli() -> None:
    """Fine-tune SAM with LoRA on shard datasets and evaluate it with point prompts.

    `train fit` trains from shard directories written by `synth build`, `train pretrain` makes a
    pretrained tiny SAM from unlabelled slices (automatic masks), `train eval` scores a run
    (or zero-shot SAM) on test volumes with DSC/HD95, `train report` puts evaluations side by side,
    `train predict` segments a new scan from clicked points, `train export` writes a run's adapter
    and card for publishing.
    """


def main() -> None:
    from train.threads import apply_env_defaults

    apply_env_defaults()  # before any command imports torch (OpenMP reads it once)
    run_cli(cli)


if __name__ == "__main__":
    main()
