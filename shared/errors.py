"""User-facing errors.

Every problem a user can cause (a missing file, a truncated NIfTI, a bad option) is raised as
an :class:`ExemplarSamError` whose message is ONE line naming the file and the problem. The CLIs
print it as ``error: <message>`` and exit with status 2, without a traceback unless ``--debug``.
"""
from __future__ import annotations


class ExemplarSamError(Exception):
    """Base class for errors caused by user input; the message is shown as-is, on one line."""

    exit_code = 2


class DataError(ExemplarSamError):
    """Input data (scans, labels, shards, manifests) is missing, unreadable or inconsistent."""


class ConfigError(ExemplarSamError):
    """A command-line option or config file is invalid."""


def exception_summary(exc: BaseException, limit: int = 200) -> str:
    """``TypeName: message`` squeezed onto one line (message cut at ``limit`` characters), for
    one-line errors that wrap what a library raised."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}"
