"""``synth``: the standalone dataset generator (select exemplars, build, pack, audit)."""
from __future__ import annotations

import click

from shared.cli_support import DEBUG_HELP, LazyGroup, run_cli

COMMANDS = {
    "select": "synth.commands.select_cmd:select",
    "build": "synth.commands.build_cmd:build",
    "pack": "synth.commands.build_cmd:pack",
    "merge": "synth.commands.build_cmd:merge",
    "verify": "synth.commands.audit_cmd:verify",
    "info": "synth.commands.audit_cmd:info",
    "trace": "synth.commands.audit_cmd:trace",
    "show": "synth.commands.visual_cmd:show",
    "sheet": "synth.commands.visual_cmd:sheet",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, name="synth",
             epilog=f"--debug: {DEBUG_HELP}")
@click.version_option(package_name="exemplar-sam")
def cli() -> None:
    """Exemplar-guided data synthesis for fine-tuning SAM on a few labelled slices.

    Typical flow: `synth select` (choose exemplar slices), `synth build` (cut-paste synthesis
    into Zarr/HDF5 shards with provenance manifests), `synth verify` / `info` / `trace` / `show` /
    `sheet` (audit), `synth pack` (whole test volumes for `train eval`).
    """


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
