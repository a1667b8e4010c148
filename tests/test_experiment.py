"""bench/experiment.py drives the two CLIs by subprocess: every option it passes must exist there."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import PROJECT_ROOT


def _commands() -> dict[str, click.Group]:
    from synth.cli import cli as synth_cli
    from train.cli import cli as train_cli

    return {"synth": synth_cli, "train": train_cli}


@pytest.mark.parametrize("config", ["brats_sample.json", "synapse_sample.json"])
def test_dry_run_commands_use_existing_options(config, tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "experiment.py"),
                             str(PROJECT_ROOT / "bench" / "experiments" / config), "--dry-run", "--jobs", "2",
                             "--data-root", str(tmp_path), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    lines = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[run ]")]
    groups = _commands()
    seen = set()
    for line in lines:
        argv = shlex.split(line)
        tool, sub = Path(argv[0]).name, argv[1]
        group = groups[tool]
        command = group.get_command(click.Context(group), sub)
        assert command is not None, f"{tool} has no command {sub}"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        unknown = [a for a in argv[2:] if a.startswith("--") and a not in known]
        assert not unknown, f"{tool} {sub} does not take {unknown}"
        seen.add((tool, sub))
    assert {("synth", "pack"), ("synth", "select"), ("synth", "build"), ("train", "fit"), ("train", "eval")} <= seen
