"""Dataset manifests: ``dataset.json`` (the index) and ``samples.jsonl`` (per-sample provenance).

Both are written atomically (temporary file + rename); ``dataset.json`` is always written last, so
a directory without it is visibly incomplete. JSON Schemas: ``data_manifests/schemas/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from shared import fileio
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
    """UTF-8 text, atomically (:func:`shared.fileio.atomic_write_text`)."""
    fileio.atomic_write_text(path, text)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Atomic JSON write; ``indent=None`` for machine-only files (json's C encoder, ~10x faster)."""
    write_text_atomic(path, dumps(obj, indent=indent) + "\n")


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    """JSON lines: one canonical :func:`dumps` per record, each ending in a newline."""
    return "".join(dumps(r) + "\n" for r in records)


def read_json(path: str | Path) -> Any:
    """A JSON file, or a one-line DataError naming it (:func:`shared.fileio.read_json`)."""
    return fileio.read_json(path)


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


# What the fields of a samples.jsonl record mean (units, order); copied into dataset.json's
# "_sample_fields" so the folder explains itself. Kept in sync with data_manifests/schemas/sample.schema.json.
SAMPLE_FIELDS = {
    "id": "sample id (s000123 synthesized, e0001 exemplars, CASE:SLICE all-slices/volumes)",
    "shard, index": "where it is stored: shard number and position INSIDE that shard (not the sample's "
                    "number in the dataset, which is the line number of the record, 0-based)",
    "sha256": "of the stored image bytes (its dtype, cropped to the true size) and of the uint8 label",
    "class_pixels": "class name -> pixel count in the stored label",
    "source": "the source slice {volume, slice} (kinds exemplars, all-slices, volumes)",
    "synthesis.seed": "[build seed, sample number]: the random generator of this sample",
    "synthesis.shape, src_shape": "[rows, cols] in pixels (the output frame; the object's exemplar slice)",
    "synthesis.exemplar": "the base exemplar slice {volume, slice}",
    "synthesis.background": "ref = the background slice; center = [x, y] = [column, row] in pixels, the "
                            "pivot of its transform; match = fraction (0-1) of the exemplar's foreground "
                            "that falls on the background's body",
    "synthesis.objects[]": "pasted objects, in paste order. ref = exemplar slice it was cut from; classes = "
                           "label values it carries; class = the one organ cut out (multi-organ tasks "
                           "only; absent for single-target tasks, where the whole foreground is one "
                           "object); pixels = its pixel count in the exemplar; center = [x, y] = "
                           "[column, row] in pixels of the exemplar slice, its centroid and the pivot of "
                           "its transform; inside = fraction (0-1) of it that landed on the background's "
                           "body",
    "params": "the drawn transform: scale (factor), rotation (degrees, counter-clockwise as displayed), "
              "flip_h / flip_v (left-right / up-down), tx, ty (translation in output pixels; x = columns "
              "right, y = rows down), blur_sigma (Gaussian sigma in pixels, 0 = none), gain (factor), "
              "gamma (exponent), shift (added intensity, image in [0, 1]). Geometry: p_out = center + "
              "(tx, ty) + Rotate Scale Flip (p - center); then blur; then clip(gain * x ** gamma + "
              "shift, 0, 1)",
}


def describe_dataset(info: dict[str, Any]) -> list[str]:
    """The human summary that heads dataset.json (key "_about", sorted first): what the folder holds."""
    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    shards = info.get("shards") or []
    source = info.get("source") or {}
    classes = [c for c in (info.get("class_names") or [])[1:]]
    lines = [f"{count(int(info.get('num_samples', 0)), str(info.get('kind')) + ' sample')} of "
             f"{source.get('name', '?')}" + (f" (root {source['root']})" if source.get("root") else "")
             + f"; classes {', '.join(classes) or '-'} ({info.get('task', '?')} task); "
             f"{count(len(shards), str(info.get('format', '?')) + ' shard')} in shards/, images "
             f"{info.get('image_dtype', '?')} in [0, 1], labels uint8."]
    exemplars, pool = info.get("exemplars") or [], info.get("background_pool") or []
    if exemplars:
        cases = {e.get("volume") for e in exemplars}
        lines.append(f"Made from {count(len(exemplars), 'exemplar slice')} of {count(len(cases), 'case')} and "
                     f"{count(len(pool), 'background slice')} (lists: exemplars, background_pool).")
    volumes = info.get("volumes") or []
    if volumes:
        lines.append(f"Holds {count(len(volumes), 'whole volume')} (list: volumes).")
    lines.append("samples.jsonl: one provenance record per sample, in sample order; its fields are "
                 "explained in _sample_fields. Schemas: data_manifests/schemas/dataset.schema.json, "
                 "sample.schema.json.")
    return lines


def write_dataset(root: str | Path, info: dict[str, Any], records: Iterable[dict[str, Any]] | str) -> None:
    """Write samples.jsonl, then dataset.json (last: its presence marks the dataset complete).

    ``records``: the sample records, or samples.jsonl's text already encoded by :func:`dumps`
    (one record per line; a build joins its shards' sidecars without decoding them).

    dataset.json starts with ``_about`` (a summary for people, recomputed from ``info`` each time)
    and ``_sample_fields`` (what the record fields mean, with units).
    """
    root = Path(root)
    info = {**info, "build_id": compute_build_id(info)}  # the generation readers pin
    write_text_atomic(root / SAMPLES_FILE, records if isinstance(records, str) else jsonl_text(records))
    info = {k: v for k, v in info.items() if k not in ("_about", "_sample_fields")}
    write_json_atomic(root / DATASET_FILE, {"_about": describe_dataset(info), "_sample_fields": SAMPLE_FIELDS,
                                            **info})


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
