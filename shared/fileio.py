"""The project's one way to write a file atomically and to read a JSON file into a one-line error.

Atomic: the bytes go to a hidden temporary file beside the target (same filesystem), are flushed
and fsync'ed, then ``os.replace`` puts them in place. A reader therefore sees the old file or the
whole new one, never a torn one, and a crash leaves at most a ``.NAME.tmp-PID`` file behind (which
is removed when the write fails inside Python).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from shared.errors import DataError, ExemplarSamError


def temporary_sibling(path: Path) -> Path:
    """Where an atomic write of ``path`` stages its bytes (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", *, make_parent: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``.

    For writers that stream (``torch.save(obj, f)``, ``np.save``); on an exception the target is
    untouched and the temporary file is removed."""
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # a crash right after the rename must not leave an empty file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``obj`` as JSON (UTF-8, trailing newline), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def read_json(path: str | Path, *, what: str = "file", expect: type | None = None,
              error: type[ExemplarSamError] = DataError) -> Any:
    """Parse a JSON file, or raise ``error`` with one line naming the file and the problem.

    what: how the message names the file ("split file", "config file", ...);
    expect: the type the top level must have (``dict``, ``list``), checked when given."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a JSON {what}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:   # e.g. 100,000 nested brackets: json's decoder recurses per level
        raise error(f"{path}: {what} JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({' '.join(str(exc).split())})") from None
    if expect is not None and not isinstance(data, expect):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise error(f"{path}: expected {kind} at the top level of the {what}")
    return data
