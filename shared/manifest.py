"""Dataset manifests: ``dataset.json`` (the index) and ``samples.jsonl`` (per-sample provenance).

Both are written atomically (temporary file + rename); ``dataset.json`` is always written last, so
a directory without it is visibly incomplete. JSON Schemas: ``data_manifests/schemas/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from shared.errors import DataError
from shared.shards import DATASET_FILE, SAMPLES_FILE, compute_build_id

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "data_manifests" / "schemas"
DATASET_KINDS = ("synthesized", "exemplars", "all-slices", "volumes")


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("exemplar-sam")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def _default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Canonical JSON (sorted keys, numpy scalars as numbers) so manifests are byte-reproducible."""
    return json.dumps(obj, default=_default, sort_keys=True, indent=indent, ensure_ascii=False,
                      separators=(",", ": ") if indent else (",", ":"))


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Atomic JSON write; ``indent=None`` for machine-only files (json's C encoder, ~10x faster)."""
    write_text_atomic(path, dumps(obj, indent=indent) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(dumps(r) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from exc


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {lineno} is not a JSON object")
            yield rec


def read_samples(root: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(Path(root) / SAMPLES_FILE))


def write_dataset(root: str | Path, info: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    """Write samples.jsonl, then dataset.json (last: its presence marks the dataset complete)."""
    root = Path(root)
    info = {**info, "build_id": compute_build_id(info)}  # the generation readers pin
    write_jsonl_atomic(root / SAMPLES_FILE, records)
    write_json_atomic(root / DATASET_FILE, info)


def load_schema(name: str) -> dict[str, Any]:
    """``name`` is "dataset" or "sample"."""
    return read_json(SCHEMA_DIR / f"{name}.schema.json")


def validate(obj: Any, name: str, *, where: str = "") -> None:
    """Validate against a JSON Schema in data_manifests/schemas (needs jsonschema; DataError if invalid)."""
    import jsonschema

    try:
        jsonschema.validate(obj, load_schema(name))
    except jsonschema.ValidationError as exc:
        loc = "/".join(str(p) for p in exc.absolute_path)
        raise DataError(f"{where or name}: does not match {name}.schema.json at '{loc}': {exc.message}") from exc
