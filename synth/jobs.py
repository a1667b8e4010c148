"""Resolve a build request into a :class:`synth.build.Job`: source, split, exemplar list, bank.

Volumes are read in parallel worker processes (one volume per task); each returns only what the
build keeps: its selection statistics, candidate slices and the sha256 of its files. So every
volume is decoded once, and the bank (exemplar + background slices) is assembled in the parent,
where forked build workers share it without copying.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shared.errors import ConfigError, DataError
from shared.hashing import sha256_array, sha256_file
from synth.build import (BuildConfig, Job, Log, SliceProducer, SynthesisProducer, _stderr, default_num_samples)


# Up to this many cases, the scan keeps every candidate exemplar slice in memory (one read per
# volume); above it, only the chosen exemplars are read again after selection (bounded memory).
KEEP_CANDIDATES_MAX_CASES = 16


def parse_slice_ref(text: str, option: str = "--exclude-exemplar") -> tuple[str, int]:
    """``CASE:SLICE`` -> (case, slice)."""
    case, sep, k = str(text).rpartition(":")
    if not sep or not case or not k.strip().lstrip("-").isdigit():
        raise ConfigError(f"{option} {text!r}: expected CASE:SLICE, e.g. Brats18_2013_3_1:77")
    return case, int(k)


# --------------------------------------------------------------------------------------------
# Reading volumes in parallel


def _relpath(path: Path, root: Path | None) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)


def _read_case(args: tuple) -> dict[str, Any]:
    """Worker: load one volume; return its scan, the slices asked for and its fingerprint."""
    source, case, want_scan, fg_min, slices = args[:5]
    keep_candidates = args[5] if len(args) > 5 else True
    vol = source.load(case)
    out: dict[str, Any] = {"case": case, "num_slices": vol.num_slices}
    wanted = set(slices or ())
    if want_scan:
        from synth.selection import scan_volume

        scan = scan_volume(vol)
        out["scan"] = scan
        # the background slices (the whole pool goes into the bank) and, for small datasets, the
        # candidate exemplar slices (selection happens in the parent; saves a second read)
        if keep_candidates:
            wanted |= {int(k) for k in np.flatnonzero(scan.foreground >= fg_min)}
        wanted |= {int(k) for k in scan.background_slices()}
    out["slices"] = {k: (np.ascontiguousarray(vol.image[k]), np.ascontiguousarray(vol.label[k]))
                     for k in sorted(wanted) if 0 <= k < vol.num_slices}
    files = tuple(source.files(case))
    root = Path(source.root) if getattr(source, "root", None) is not None else None
    if files:
        out["files"] = {_relpath(Path(p), root): sha256_file(p) for p in files}
    else:
        h = hashlib.sha256()
        h.update(sha256_array(vol.image).encode())
        h.update(sha256_array(vol.label).encode())
        out["arrays"] = h.hexdigest()
    return out


def read_cases(source: Any, tasks: Sequence[tuple], workers: int, progress: bool, desc: str) -> list[dict[str, Any]]:
    """Run :func:`_read_case` over ``tasks`` on up to ``workers`` processes, results in order."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="vol", disable=not progress, leave=False)
    try:
        workers = max(1, min(workers, len(tasks)))
        if workers == 1:
            out = []
            for t in tasks:
                out.append(_read_case(t))
                bar.update(1)
            return out
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            out = []
            for res in pool.imap(_read_case, tasks):
                out.append(res)
                bar.update(1)
            return out
    finally:
        bar.close()


def _fingerprint(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    files: dict[str, str] = {}
    arrays: dict[str, str] = {}
    for r in results:
        files.update(r.get("files") or {})
        if "arrays" in r:
            arrays[r["case"]] = r["arrays"]
    return {"algorithm": "sha256", "files": dict(sorted(files.items())), "arrays": dict(sorted(arrays.items()))}


# --------------------------------------------------------------------------------------------
# Exemplar list + bank


def _open_source(cfg: BuildConfig):
    from shared.sources import open_source

    return open_source(cfg.dataset, cfg.root, modality=cfg.modality, config=cfg.source_config)


def _apply_excludes(exemplars: list[dict[str, Any]], excludes: Sequence[str], where: str) -> list[dict[str, Any]]:
    if not excludes:
        return exemplars
    drop = {parse_slice_ref(e) for e in excludes}
    present = {(e["volume"], int(e["slice"])) for e in exemplars}
    unknown = sorted(drop - present)
    if unknown:
        case, k = unknown[0]
        raise ConfigError(f"--exclude-exemplar {case}:{k}: not in the exemplar list ({where})")
    kept = [e for e in exemplars if (e["volume"], int(e["slice"])) not in drop]
    if not kept:
        raise ConfigError(f"--exclude-exemplar removes every exemplar of {where}; nothing left to build from")
    return kept


def prepare_exemplar_job(cfg: BuildConfig, out: Path, *, workers: int, progress: bool, log: Log = _stderr) -> Job:
    """A ``synthesized`` or ``exemplars`` (``--no-synthesis``) job from --exemplars / --exemplar-list."""
    from shared.splits import resolve_split
    from synth.selection import ExemplarList, ExemplarSpec, select_exemplars

    cfg.check()
    source = _open_source(cfg)
    min_pixels = 10 if cfg.min_pixels is None else cfg.min_pixels
    if min_pixels < 1:
        raise ConfigError(f"--min-pixels {min_pixels}: must be at least 1")
    if cfg.kind == "synthesized":
        from synth.synthesis import load_config

        synth_config = load_config(cfg.synthesis_config)
        cfg.synthesis = synth_config.to_json()
    if cfg.exemplar_list is not None:
        listing = ExemplarList.from_json(cfg.exemplar_list, source)
        where = str(cfg.exemplar_list)
        if not listing.background_pool or any("classes" not in e for e in listing.exemplars):
            log(f"{where}: completing the list from the data (classes, hashes, background pool)")
            listing.complete(source, min_pixels=min_pixels, progress=progress)
        needed: dict[str, set[int]] = {}
        for e in listing.exemplars + listing.background_pool:
            needed.setdefault(e["volume"], set()).add(int(e["slice"]))
        tasks = [(source, case, False, 0, sorted(ks)) for case, ks in sorted(needed.items())]
        results = read_cases(source, tasks, workers, progress, "reading exemplars")
    else:
        spec = ExemplarSpec.parse(cfg.exemplars)
        cases = resolve_split(source, cfg.split, cfg.split_file)
        keep = len(cases) <= KEEP_CANDIDATES_MAX_CASES
        tasks = [(source, case, True, min_pixels, (), keep) for case in cases]
        results = read_cases(source, tasks, workers, progress, f"scanning {source.name}")
        seed = cfg.seed if cfg.selection_seed is None else cfg.selection_seed
        listing = select_exemplars(source, cases, spec, seed, min_pixels, split=cfg.split,
                                   scans=[r["scan"] for r in results])
        where = f"the selection {cfg.exemplars} of {source.name}"
    exemplars = _apply_excludes(listing.exemplars, cfg.exclude_exemplars, where)
    if cfg.kind == "synthesized" and not listing.background_pool:
        more = "more cases (--split all)" if cfg.split != "all" and cfg.exemplar_list is None else "more cases"
        raise DataError(f"{where}: empty background pool (no slice of the {len(listing.cases) or 'chosen'} case(s) "
                        f"is free of foreground and has body content); synthesis needs at least one background "
                        f"slice: use {more} or an --exemplar-list with a background_pool")
    slices = {(r["case"], k): v for r in results for k, v in r["slices"].items()}
    wanted = [(e["volume"], int(e["slice"])) for e in exemplars + list(listing.background_pool)]
    missing = sorted({r for r in wanted if r not in slices})
    if missing:  # large datasets (or a fallback background pool): read the chosen slices now
        slices.update(load_slices(source, missing, workers, progress))
    meta = {"spec": listing.spec, "seed": listing.seed, "rule": listing.rule, "split": listing.split,
            "cases": listing.cases, "selection": listing.selection,
            "path": str(cfg.exemplar_list) if cfg.exemplar_list else None,
            "excluded": sorted(cfg.exclude_exemplars), "num_exemplars": len(exemplars),
            "num_background": len(listing.background_pool)}
    common = dict(out=out, config=cfg, class_names=tuple(source.class_names), task=source.task,
                  source=source.describe(), fingerprint=_fingerprint(results), exemplars=exemplars,
                  background_pool=list(listing.background_pool), exemplar_list_meta=meta)
    if cfg.kind == "exemplars":
        refs = [(e["volume"], int(e["slice"])) for e in exemplars]
        ids = [f"e{i:04d}" for i in range(len(refs))]
        cfg.num_samples = len(refs)
        return Job(producer=_PreloadedSlices("exemplars", refs, ids, slices), num_samples=len(refs), **common)
    from synth.background import background_image
    from synth.synthesis import SliceBank, SliceRef

    bank = SliceBank(
        exemplars={SliceRef(v, k): slices[(v, k)] for v, k in ((e["volume"], int(e["slice"])) for e in exemplars)},
        backgrounds={SliceRef(v, k): background_image(*slices[(v, k)])
                     for v, k in ((e["volume"], int(e["slice"])) for e in listing.background_pool)},
        class_names=tuple(source.class_names))
    if cfg.num_samples is None:
        cfg.num_samples = default_num_samples(cfg.dataset, source.task)
    producer = SynthesisProducer(bank, synth_config, cfg.seed, source.task)
    return Job(producer=producer, num_samples=cfg.num_samples, **common)


class _PreloadedSlices(SliceProducer):
    """Exemplar slices already read by :func:`read_cases` (no second read of the volumes)."""

    def __init__(self, kind: str, refs, ids, slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]):
        super().__init__(kind, None, refs, ids)
        self.slices = {ref: slices[ref] for ref in refs}

    def make(self, i: int):
        case, k = self.refs[i]
        image, label = self.slices[(case, k)]
        return image, label, {"kind": self.kind, "source": {"volume": case, "slice": int(k)}}

    def extra_shard_info(self) -> dict[str, Any]:
        return {}


def prepare_slices_job(cfg: BuildConfig, out: Path, *, workers: int, progress: bool, log: Log = _stderr) -> Job:
    """``all-slices`` (every slice of the split) or ``volumes`` (``synth pack``) job."""
    from shared.splits import resolve_split

    cfg.check()
    source = _open_source(cfg)
    cases = resolve_split(source, cfg.split, cfg.split_file)
    refs: list[tuple[str, int]] = []
    volumes = []
    for case in cases:
        n = int(source.num_slices(case))
        if n < 1:
            raise DataError(f"{case}: volume has no slices")
        volumes.append({"id": case, "start": len(refs), "count": n, "slices": list(range(n))})
        refs.extend((case, k) for k in range(n))
    ids = [f"{c}:{k}" for c, k in refs]
    cfg.num_samples = len(refs)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib and file reads release the GIL
        fingerprint = _fingerprint(list(pool.map(lambda c: _hash_case(source, c), cases)))
    return Job(out=out, config=cfg, producer=SliceProducer(cfg.kind, source, refs, ids), num_samples=len(refs),
               class_names=tuple(source.class_names), task=source.task, source=source.describe(),
               fingerprint=fingerprint, exemplar_list_meta={"split": cfg.split, "cases": cases},
               volumes=volumes if cfg.kind == "volumes" else None)


def _hash_case(source: Any, case: str) -> dict[str, Any]:
    files = tuple(source.files(case))
    root = Path(source.root) if getattr(source, "root", None) is not None else None
    if files:
        return {"case": case, "files": {_relpath(Path(p), root): sha256_file(p) for p in files}}
    vol = source.load(case)
    h = hashlib.sha256()
    h.update(sha256_array(vol.image).encode())
    h.update(sha256_array(vol.label).encode())
    return {"case": case, "arrays": h.hexdigest()}


# --------------------------------------------------------------------------------------------
# Rebuilding the bank of a finished dataset (for `synth verify --replay`)


def reopen_source(info: dict[str, Any], root_override: str | Path | None = None):
    from shared.sources import open_described

    desc = dict(info["source"])
    if root_override is not None:
        desc["root"] = str(root_override)
    return open_described(desc)


def check_fingerprint(source: Any, fingerprint: dict[str, Any], cases: Sequence[str], where: str,
                      workers: int = 1) -> None:
    """DataError naming the first source file (or generated volume) that changed since the build."""
    results = [_hash_case(source, c) for c in sorted(set(cases))]
    now = _fingerprint(results)
    for case_result in results:
        for rel, digest in (case_result.get("files") or {}).items():
            if rel in fingerprint.get("files", {}) and fingerprint["files"][rel] != digest:
                raise DataError(f"{where}: source file {rel} changed since the build (sha256 differs)")
        if "arrays" in case_result and fingerprint.get("arrays", {}).get(case_result["case"]) not in (None, now["arrays"][case_result["case"]]):
            raise DataError(f"{where}: source volume {case_result['case']} changed since the build")


def load_slices(source: Any, refs: Sequence[tuple[str, int]], workers: int, progress: bool) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    needed: dict[str, set[int]] = {}
    for v, k in refs:
        needed.setdefault(v, set()).add(int(k))
    known = set(source.case_ids())
    for v in needed:
        if v not in known:
            raise DataError(f"{source.name} at {source.root}: volume {v!r} named by the dataset is missing")
    tasks = [(source, case, False, 0, sorted(ks)) for case, ks in sorted(needed.items())]
    results = read_cases(source, tasks, workers, progress, "reading source slices")
    return {(r["case"], k): v for r in results for k, v in r["slices"].items()}
