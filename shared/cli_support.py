"""Shared command-line plumbing: clean one-line errors unless --debug."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import click

from shared.errors import ExemplarSamError


def run_cli(group: click.Group, argv: list[str] | None = None) -> None:
    """Run a click group; user errors become ``error: ...`` + exit 2, no traceback.

    ``--debug`` anywhere on the command line re-raises the original exception instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        with plain_progress_when_piped():
            group.main(args=args, prog_name=group.name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # bad usage: click's own message
        exc.show()
        sys.exit(exc.exit_code)
    except ExemplarSamError as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug for a traceback)", err=True)
        sys.exit(1)


class ProgressLines:
    """A stderr for logs: a progress bar's carriage-return redraws become whole lines.

    tqdm redraws its bar in place with "\r"; in a file or a pipe that is one endless line of
    redraws. Here each redraw becomes one line (repeats dropped), and every other write passes
    through unchanged. With tqdm's refresh interval raised (see :func:`plain_progress_when_piped`)
    a log gets a bar line every half minute plus the final one, with the rate.
    """

    def __init__(self, stream):
        self._stream = stream
        self._last = ""
        self._in_bar = False

    def write(self, s: str) -> int:
        if "\r" in s:
            text = next((p.strip() for p in reversed(s.split("\r")) if p.strip()), "")
            if text and text != self._last:
                self._stream.write(text + "\n")
                self._last = text
            self._in_bar = True
            return len(s)
        if self._in_bar and s == "\n":  # tqdm ends a kept bar with a newline: already written
            return len(s)
        self._in_bar = False
        return self._stream.write(s)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


PROGRESS_INTERVAL_S = 30


@contextlib.contextmanager
def plain_progress_when_piped():
    """When stderr is not a terminal, progress bars write a line every PROGRESS_INTERVAL_S seconds
    (tqdm reads TQDM_MININTERVAL) through :class:`ProgressLines` instead of redrawing with "\r"."""
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        yield
        return
    defaults = {"TQDM_MININTERVAL": str(PROGRESS_INTERVAL_S), "TQDM_MAXINTERVAL": str(2 * PROGRESS_INTERVAL_S),
                "TQDM_ASCII": " 123456789#"}  # tqdm's ASCII bar: reads better in a log than block characters
    saved = {k: os.environ.get(k) for k in defaults}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    sys.stderr = ProgressLines(stream)
    try:
        yield
    finally:
        sys.stderr = stream
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_line(message: str) -> str:
    return " ".join(message.split())


DEBUG_HELP = "Show the full traceback on errors (accepted anywhere on the command line)."


def debug_option(f: Callable) -> Callable:
    """A documented --debug flag; run_cli strips it before click parses, this keeps --help honest."""
    return click.option("--debug", is_flag=True, expose_value=False, help=DEBUG_HELP)(f)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used.

    ``lazy_commands`` maps a command name to ``"module.path:attribute"``. Keeps ``--help`` fast
    (torch is imported only by the commands that need it) and lets each command live in its own
    module.
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            import importlib

            module_name, attr = self.lazy_commands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


def check_writable(folder, what: str = "--out") -> None:
    """Create ``folder`` (and parents) if needed and prove it writable, before any work starts.

    Creates and removes a probe file: permission bits say nothing for root, and a read-only
    mount or a path below a regular file fails only on a real write. DataError (exit 2) naming
    the folder otherwise.
    """
    import os
    import tempfile
    from pathlib import Path

    from shared.errors import DataError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{what} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{what} {folder}: not writable ({exc.strerror or type(exc).__name__})") from None
