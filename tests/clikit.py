"""Run the `synth` / `train` click groups in-process, as their console scripts do."""
from __future__ import annotations

import contextlib
import io

from shared.cli_support import run_cli


def run_in_process(group, *args) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``group`` run on ``args`` through `run_cli`."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(group, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue() + err.getvalue()
