"""The exemplar list: the chosen exemplar slices plus the background pool, as a file.

:func:`select_exemplars` applies the selection rules (:mod:`synth.selection.rules`) to a source's
cases and records, per exemplar, its classes, files and their sha256; :class:`ExemplarList` is
that record: written by ``synth select`` (:meth:`ExemplarList.to_json`), read back by ``synth
build --exemplar-list`` (:meth:`ExemplarList.from_json`, checked against
data_manifests/schemas/exemplar_list.schema.json and the source), completed from the data when
hand-written (:func:`complete_list`).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_text, read_json
from synth.selection.background_pool import sample_pool
from synth.selection.rules import (BACKGROUND_MIN_CONTENT, CONTENT_DELTA, FALLBACK_POOL_FRACTION, ExemplarSpec, VolumeScan,
                             background_pool, pick_most_organs, pick_random, rank_slices, scan_source, slice_classes)

SCHEMA_VERSION = 1
RULES = {"single": "random-slices", "multi": "most-organs"}
EXEMPLAR_LIST_SCHEMA = "exemplar_list"


@dataclass
class ExemplarList:
    """The chosen exemplar slices plus the background pool (see DESIGN.md, "Exemplar list")."""

    dataset: dict[str, Any]
    split: str
    spec: str
    seed: int
    rule: str
    exemplars: list[dict[str, Any]]
    background_pool: list[dict[str, Any]]
    cases: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def pairs(self) -> list[tuple[str, int]]:
        return [(e["volume"], int(e["slice"])) for e in self.exemplars]

    def background_pairs(self) -> list[tuple[str, int]]:
        return [(e["volume"], int(e["slice"])) for e in self.background_pool]

    def class_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for e in self.exemplars:
            for name, count in e.get("classes", {}).items():
                totals[name] = totals.get(name, 0) + int(count)
        return totals

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "split": self.split,
            "cases": self.cases,
            "spec": self.spec,
            "seed": self.seed,
            "rule": self.rule,
            "selection": self.selection,
            "exemplars": self.exemplars,
            "background_pool": self.background_pool,
        }

    def to_json(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write atomically (temporary name, then rename); refuses to replace a file unless asked."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise DataError(f"{path}: already exists (pass --overwrite to replace it)")
        if path.parent and not path.parent.is_dir():
            raise DataError(f"{path.parent}: output folder does not exist")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path, source=None) -> "ExemplarList":
        """Read a list (written by ``synth select``, or hand-written with just ``volume``/``slice``
        per entry). With ``source``, every entry is checked: unknown volume or slice out of range
        is a DataError naming the file and the entry."""
        path = Path(path)
        data = read_json(path, what="exemplar list")
        if isinstance(data, list):  # a bare list of {volume, slice}
            data = {"exemplars": data}
        if not isinstance(data, dict) or not isinstance(data.get("exemplars"), list) or not data["exemplars"]:
            raise DataError(f"{path}: expected an object with a non-empty 'exemplars' list")
        check_schema(_check_entries(data, path), path)
        entries = []
        for i, entry in enumerate(data["exemplars"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("volume"), str) \
                    or not isinstance(entry.get("slice"), int) or isinstance(entry.get("slice"), bool):
                raise DataError(f"{path}: exemplars[{i}] needs 'volume' (string) and 'slice' (integer), got {entry!r}")
            entries.append(dict(entry))
        pool = data.get("background_pool", [])
        for i, entry in enumerate(pool):
            if not isinstance(entry, dict) or not isinstance(entry.get("volume"), str) or not isinstance(entry.get("slice"), int):
                raise DataError(f"{path}: background_pool[{i}] needs 'volume' and 'slice', got {entry!r}")
        out = cls(dataset=data.get("dataset", {}), split=data.get("split", "user"), spec=str(data.get("spec", len(entries))),
                  seed=int(data.get("seed", 0)), rule=data.get("rule", "user"), exemplars=entries,
                  background_pool=list(pool), cases=list(data.get("cases", [])),
                  selection=dict(data.get("selection", {})), schema_version=int(data.get("schema_version", SCHEMA_VERSION)))
        if source is not None:
            out.validate(source, path)
        return out

    def validate(self, source, path: str | Path = "exemplar list") -> None:
        """Unknown volumes, slices out of range or duplicates -> DataError naming the entry."""
        made_for = self.dataset.get("name") if self.dataset else None
        if made_for is not None and made_for != source.name:
            raise DataError(f"{path}: the list was made for dataset {made_for!r}, not {source.name!r}")
        names = self.dataset.get("class_names") if self.dataset else None
        if names is not None and tuple(names) != tuple(source.class_names):
            raise DataError(f"{path}: the list's classes {list(names)} differ from the source's {list(source.class_names)}")
        known = set(source.case_ids())
        sizes: dict[str, int] = {}
        seen: set[tuple[str, int]] = set()
        for what, entries in (("exemplars", self.exemplars), ("background_pool", self.background_pool)):
            for i, entry in enumerate(entries):
                volume, k = entry["volume"], int(entry["slice"])
                if volume not in known:
                    raise DataError(f"{path}: {what}[{i}] names volume {volume!r}, which {source.name} at "
                                    f"{source.root} does not have")
                if volume not in sizes:
                    sizes[volume] = source.num_slices(volume)
                if not 0 <= k < sizes[volume]:
                    raise DataError(f"{path}: {what}[{i}] slice {k} is out of range for {volume} "
                                    f"({sizes[volume]} slices)")
                if what == "exemplars":
                    if (volume, k) in seen:
                        raise DataError(f"{path}: {what}[{i}] ({volume}, slice {k}) is listed twice")
                    seen.add((volume, k))

    def verify_hashes(self, source, path: str | Path = "exemplar list") -> int:
        """DataError naming the changed file when a source file differs from the sha256 recorded
        for an exemplar (the list was made from other data). Returns the number of files checked."""
        hasher = SliceHasher(source)
        checked: set[str] = set()
        for i, entry in enumerate(self.exemplars):
            recorded = entry.get("sha256") or {}
            if not recorded:
                continue
            names, current = hasher.slice_record(entry["volume"], int(entry["slice"]))
            for key, digest in recorded.items():
                if key not in current:
                    continue
                checked.add(names[key])
                if current[key] != digest:
                    raise DataError(f"{path}: {names[key]} changed since the list was made (sha256 differs from "
                                    f"the one recorded for exemplars[{i}], {entry['volume']} slice {entry['slice']}); "
                                    f"select again, or pass --no-verify-hashes to use the list anyway")
        return len(checked)

    def complete(self, source, *, min_pixels: int = 1, progress: bool = False) -> "ExemplarList":
        """Fill in what a hand-written list lacks (classes, sha256, background pool) from the data;
        an exemplar without any foreground is a DataError."""
        self.validate(source)
        volumes = sorted({v for v, _ in self.pairs()} | set(self.cases))
        scans = {s.volume_id: s for s in scan_source(source, volumes, progress=progress)}
        hasher = SliceHasher(source)
        for i, entry in enumerate(self.exemplars):
            scan, k = scans[entry["volume"]], int(entry["slice"])
            if scan.foreground[k] < min_pixels:
                raise DataError(f"exemplars[{i}] ({entry['volume']}, slice {k}) has {int(scan.foreground[k])} "
                                f"foreground pixels (< {min_pixels}): nothing to copy")
            entry.setdefault("classes", slice_classes(scan, k, source.class_names))
            files, digests = hasher.slice_record(entry["volume"], k)
            entry.setdefault("files", files)
            entry.setdefault("sha256", digests)
        if not self.dataset:
            self.dataset = source.describe()
        if not self.cases:
            self.cases = volumes
        if not self.background_pool:
            self.background_pool = background_pool(list(scans.values()), set(self.pairs()))
        return self


def check_schema(data: dict[str, Any], path: str | Path) -> None:
    """One-line DataError naming the file and the field when ``data`` does not match
    data_manifests/schemas/exemplar_list.schema.json.

    A list written by `synth select` (it has ``schema_version``) must match in full; a hand-written
    one needs only ``exemplars`` with ``volume``/``slice`` (the rest is filled in from the data),
    but every field it does give is type-checked by the same schema.
    """
    import jsonschema
    from shared.manifest import load_schema

    schema = load_schema(EXEMPLAR_LIST_SCHEMA)
    if "schema_version" not in data:
        schema = copy.deepcopy(schema)
        schema["required"] = ["exemplars"]
        schema["properties"]["exemplars"]["items"]["required"] = ["volume", "slice"]
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        message = " ".join(error.message.split())
        if len(message) > 160:
            message = message[:157] + "..."
        raise DataError(f"{path}: {where}: {message} (see data_manifests/schemas/{EXEMPLAR_LIST_SCHEMA}.schema.json)")


def _check_entries(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One pass over ``exemplars`` and ``background_pool``: a slice listed twice is an error (a
    pasted list repeated a million times must not turn into a 66 MB dataset.json), and so is a
    pool entry without a string ``volume`` and an integer ``slice`` >= 0.

    Returns ``data`` with the pool cut to its first entries for the schema check: the schema says
    nothing more about pool entries than this pass checked, and jsonschema takes ~0.1 ms per
    entry (minutes for a million). Exemplar entries of the wrong type are left to the schema.
    """
    for what in ("exemplars", "background_pool"):
        entries = data.get(what)
        if not isinstance(entries, list):
            continue
        seen: set[tuple[str, int]] = set()
        for i, entry in enumerate(entries):
            volume = entry.get("volume") if isinstance(entry, dict) else None
            k = entry.get("slice") if isinstance(entry, dict) else None
            if not isinstance(volume, str) or isinstance(k, bool) or not isinstance(k, int) or k < 0:
                if what == "exemplars":
                    continue
                shown = repr(entry)
                raise DataError(f"{path}: background_pool/{i}: needs 'volume' (string) and 'slice' (integer >= 0), "
                                f"got {shown if len(shown) < 80 else shown[:77] + '...'}")
            if (volume, k) in seen:
                raise DataError(f"{path}: {what}[{i}] ({volume}, slice {k}) is listed twice"
                                + (f" ({len(entries):,} entries in all)" if len(entries) > 1000 else ""))
            seen.add((volume, k))
    pool = data.get("background_pool")
    if isinstance(pool, list) and len(pool) > 100:
        data = {**data, "background_pool": pool[:100]}
    return data


class SliceHasher:
    """sha256 of the files an exemplar comes from (cached per file); generated sources hash arrays."""

    def __init__(self, source, known: dict[str, str] | None = None):
        self.source = source
        self._cache: dict[str, str] = dict(known or {})  # str(path) -> sha256 already computed

    def file(self, path: Path) -> str:
        key = str(path)
        if key not in self._cache:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._cache[key] = digest.hexdigest()
        return self._cache[key]

    def slice_record(self, volume: str, k: int) -> tuple[dict[str, str], dict[str, str]]:
        files = self.source.slice_files(volume, k)
        if files.get("image_file") is None:  # generated (demo): hash the volume's arrays
            key = f"generated:{self.source.name}/{volume}"
            if key not in self._cache:
                vol = self.source.load(volume)
                self._cache[key] = json.dumps([hashlib.sha256(vol.image.tobytes()).hexdigest(),
                                               hashlib.sha256(vol.label.tobytes()).hexdigest()])
            image_hash, label_hash = json.loads(self._cache[key])
            return ({"image_file": f"{key}/image", "label_file": f"{key}/label"},
                    {"image_file": image_hash, "label_file": label_hash})
        root = self.source.root
        names = {k2: _relative(p, root) for k2, p in files.items()}
        return names, {k2: self.file(p) for k2, p in files.items()}


def _relative(path: Path, root: Path | None) -> str:
    try:
        return str(Path(path).resolve().relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- entry point
def select_exemplars(source, case_ids: list[str], spec: str | int | ExemplarSpec, seed: int = 0,
                     min_pixels: int = 10, *, split: str = "train", progress: bool = False,
                     scans: list[VolumeScan] | None = None, file_hashes: dict[str, str] | None = None,
                     pool_size: int | None = None) -> ExemplarList:
    """Choose exemplar slices among ``case_ids`` by the task's rule and compute the background pool.

    ``scans`` (from :func:`scan_source` or ``synth.selection.scanning.stream_scan``) can be passed to avoid
    reading the volumes again, ``file_hashes`` (str(path) -> sha256) to avoid hashing files again.
    ``pool_size``: above it, the background pool is the seeded sample of ``synth.selection.background_pool.sample_pool``.
    """
    if not isinstance(spec, ExemplarSpec):
        spec = ExemplarSpec.parse(spec)
    if min_pixels < 1:
        raise ConfigError(f"--min-pixels {min_pixels}: must be at least 1")
    if not case_ids:
        raise DataError(f"no cases chosen from {source.name} at {source.root} (empty split)")
    if scans is None:
        scans = scan_source(source, case_ids, progress=progress)
    by_id = {s.volume_id: s for s in scans}
    if source.task == "single":
        eligible = sum(int((s.foreground >= min_pixels).sum()) for s in scans)
        n = spec.resolve(eligible)
        picks = pick_random(scans, n, seed, min_pixels)
    else:
        eligible = sum(len(rank_slices(s, min_pixels)) for s in scans)
        n = spec.resolve(eligible)
        picks = pick_most_organs(scans, n, seed, min_pixels)
    hasher = SliceHasher(source, file_hashes)
    exemplars = []
    for volume, k in picks:
        scan = by_id[volume]
        files, digests = hasher.slice_record(volume, k)
        exemplars.append({
            "volume": volume,
            "slice": k,
            "classes": slice_classes(scan, k, source.class_names),
            "foreground_pixels": int(scan.foreground[k]),
            "organs": int(scan.organs(min_pixels)[k]),
            "files": files,
            "sha256": digests,
        })
    full_pool = background_pool(scans, set(picks))
    pool = sample_pool(full_pool, pool_size, seed)
    selection = {
        "min_pixels": min_pixels,
        "eligible_slices": eligible,
        "requested": n,
        "percent": spec.percent,
        "background_rule": {"no_foreground": not any("erased_pixels" in e for e in pool),
                            "fallback_fraction_erased": FALLBACK_POOL_FRACTION,
                            "min_content_fraction": BACKGROUND_MIN_CONTENT,
                            "content_delta": CONTENT_DELTA,
                            "eligible": len(full_pool), "pool_size": pool_size or None,
                            "sampled": len(pool) < len(full_pool)},
        "per_case": [{"volume": s.volume_id, "slices": s.num_slices,
                      "eligible": int((s.foreground >= min_pixels).sum()) if source.task == "single"
                      else int((s.organs(min_pixels) > 0).sum()),
                      "background": int(len(s.background_slices()))} for s in scans],
    }
    return ExemplarList(dataset=source.describe(), split=split, spec=spec.text, seed=int(seed),
                        rule=RULES[source.task], exemplars=exemplars, background_pool=pool,
                        cases=sorted(case_ids), selection=selection)
