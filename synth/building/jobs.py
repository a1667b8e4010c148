"""Resolve a build request into a :class:`synth.building.spec.Job`: source, split, exemplar list, bank.

Volumes are read in parallel worker processes (one volume per task); each returns only what the
build keeps: its selection statistics, candidate slices and the sha256 of its files. So every
volume is decoded once, and the bank (exemplar + background slices) is assembled in the parent,
where forked build workers share it without copying.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shared.errors import ConfigError, DataError
from shared.hashing import sha256_array, sha256_file
from synth.synthesis.background import background_image
from synth.synthesis.bank import make_bank
from synth.building.spec import BuildConfig, Job, Log, default_num_samples, log_to_stderr
from synth.selection.exemplar_list import ExemplarList, select_exemplars
from synth.base.parallel import Worker
from synth.base.slice_store import BackgroundInfo, encode_slice
from synth.selection.background_pool import sample_pool
from synth.building.producers import PreloadedSlices, SliceProducer, SynthesisProducer
from synth.selection.scanning import ScanState, hash_case_files, map_volumes, relpath, stream_scan
from synth.selection.rules import ExemplarSpec
from synth.synthesis.config import load_config


def parse_slice_ref(text: str, option: str = "--exclude-exemplar") -> tuple[str, int]:
    """``CASE:SLICE`` -> (case, slice)."""
    case, sep, k = str(text).rpartition(":")
    if not sep or not case or not k.strip().lstrip("-").isdigit():
        raise ConfigError(f"{option} {text!r}: expected CASE:SLICE, e.g. Brats18_2013_3_1:77")
    return case, int(k)


# --------------------------------------------------------------------------------------------
# Reading volumes in parallel


def _read_case(worker: Worker, args: tuple) -> dict[str, Any]:
    """Worker: load one volume; return copies of the exemplar slices asked for (image, label), the
    background slices asked for as encoded background images, and the volume's fingerprint."""
    source = worker.state.source
    case, exemplar_ks, background_ks = args
    vol = source.load(case)
    out: dict[str, Any] = {"case": case, "num_slices": vol.num_slices}
    inside = [k for k in sorted(set(exemplar_ks) | set(background_ks)) if 0 <= k < vol.num_slices]
    # copies: a view would keep the whole float32 volume alive in the parent
    out["slices"] = {k: (np.array(vol.image[k]), np.array(vol.label[k])) for k in inside if k in set(exemplar_ks)}
    out["backgrounds"] = {k: encode_slice(background_image(vol.image[k], vol.label[k]))
                          for k in inside if k in set(background_ks)}
    if source.files(case):
        out["files"] = hash_case_files(source, case)[0]
    else:
        h = hashlib.sha256()
        h.update(sha256_array(vol.image).encode())
        h.update(sha256_array(vol.label).encode())
        out["arrays"] = h.hexdigest()
    return out


def read_cases(source: Any, tasks: Sequence[tuple], workers: int, progress: bool, desc: str) -> list[dict[str, Any]]:
    """Run :func:`_read_case` over ``tasks`` ((case, exemplar slices, background slices)) on up to
    ``workers`` processes, results in order."""
    return list(map_volumes(_read_case, tasks, workers, progress, desc, ScanState(source)))


def fingerprint_of(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The dataset's source fingerprint from per-volume results: sha256 per file, or per generated volume."""
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

    return open_source(cfg.dataset, cfg.root, modality=cfg.modality, config=cfg.source_config,
                       intensity=cfg.intensity, spacing=cfg.spacing)


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


@dataclass
class ChosenExemplars:
    """The exemplars of a build and everything read with them (from a list or a selection)."""

    listing: ExemplarList  # the list (its background pool, selection facts)
    exemplars: list[dict[str, Any]]  # the list's exemplars less --exclude-exemplar
    where: str  # how messages name the list
    slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]  # exemplar (image, label)
    fingerprint: dict[str, Any]
    backgrounds: dict[tuple[str, int], Any] = field(default_factory=dict)  # encoded (synth.base.slice_store)
    infos: dict[tuple[str, int], BackgroundInfo] = field(default_factory=dict)


def prepare_exemplar_job(cfg: BuildConfig, out: Path, *, workers: int, progress: bool, log: Log = log_to_stderr,
                         verify_hashes: bool = True) -> Job:
    """A ``synthesized`` or ``exemplars`` (``--no-synthesis``) job from --exemplars / --exemplar-list."""
    cfg.check()
    source = _open_source(cfg)
    min_pixels = 10 if cfg.min_pixels is None else cfg.min_pixels
    if min_pixels < 1:
        raise ConfigError(f"--min-pixels {min_pixels}: must be at least 1")
    if cfg.kind == "synthesized":
        synth_config = load_config(cfg.synthesis_config, cfg.recipe)
        cfg.synthesis = synth_config.to_json()
    if cfg.exemplar_list is not None:
        chosen = _listed_exemplars(cfg, source, min_pixels, workers, progress, log, verify_hashes)
    else:
        chosen = _selected_exemplars(cfg, source, min_pixels, workers, progress)
    listing, exemplars = chosen.listing, chosen.exemplars
    if cfg.kind == "synthesized" and not listing.background_pool:
        more = "more cases (--split all)" if cfg.split != "all" and cfg.exemplar_list is None else "more cases"
        raise DataError(f"{chosen.where}: empty background pool (no slice of the {len(listing.cases) or 'chosen'} "
                        f"case(s) is free of foreground and has body content); synthesis needs at least one "
                        f"background slice: use {more} or an --exemplar-list with a background_pool")
    meta = {"spec": listing.spec, "seed": listing.seed, "rule": listing.rule, "split": listing.split,
            "cases": listing.cases, "selection": listing.selection,
            "path": str(cfg.exemplar_list) if cfg.exemplar_list else None,
            "excluded": sorted(cfg.exclude_exemplars), "num_exemplars": len(exemplars),
            "num_background": len(listing.background_pool)}
    common = dict(out=out, config=cfg, class_names=tuple(source.class_names), task=source.task,
                  source=source.describe(), fingerprint=chosen.fingerprint, exemplars=exemplars,
                  background_pool=list(listing.background_pool), exemplar_list_meta=meta)
    if cfg.kind == "exemplars":
        refs = [(e["volume"], int(e["slice"])) for e in exemplars]
        ids = [f"e{i:04d}" for i in range(len(refs))]
        cfg.num_samples = len(refs)
        return Job(producer=PreloadedSlices("exemplars", refs, ids, chosen.slices), num_samples=len(refs), **common)
    bank = make_bank({ref: chosen.slices[ref] for ref in ((e["volume"], int(e["slice"])) for e in exemplars)},
                     {ref: chosen.backgrounds[ref] for ref in listing.background_pairs()},
                     tuple(source.class_names), chosen.infos)
    meta["background_storage"] = bank.background_storage()
    if cfg.num_samples is None:
        cfg.num_samples = default_num_samples(cfg.dataset, source.task)
    producer = SynthesisProducer(bank, synth_config, cfg.seed, source.task)
    return Job(producer=producer, num_samples=cfg.num_samples, **common)


def _listed_exemplars(cfg: BuildConfig, source: Any, min_pixels: int, workers: int, progress: bool, log: Log,
                      verify_hashes: bool) -> ChosenExemplars:
    """--exemplar-list: the list (completed from the data when hand-written) and its slices."""
    listing = ExemplarList.from_json(cfg.exemplar_list, source)
    where = str(cfg.exemplar_list)
    if verify_hashes:  # the list must describe these files, not an older copy of them
        listing.verify_hashes(source, where)
    else:
        log(f"{where}: --no-verify-hashes: not comparing the source files with the recorded sha256")
    if not listing.background_pool or any("classes" not in e for e in listing.exemplars):
        log(f"{where}: completing the list from the data (classes, hashes, background pool)")
        had_pool = bool(listing.background_pool)
        listing.complete(source, min_pixels=min_pixels, progress=progress)
        if not had_pool:
            listing.background_pool = sample_pool(listing.background_pool, cfg.pool_size, listing.seed)
    exemplars = _apply_excludes(listing.exemplars, cfg.exclude_exemplars, where)
    slices, stored, results = _read_listed(source, exemplars, listing.background_pool, workers, progress)
    return ChosenExemplars(listing, exemplars, where, slices, fingerprint_of(results), stored)


def _selected_exemplars(cfg: BuildConfig, source: Any, min_pixels: int, workers: int,
                        progress: bool) -> ChosenExemplars:
    """--exemplars N|P%: selection in one streaming scan (synth.selection.scanning), each volume read once."""
    from shared.splits import resolve_split

    spec = ExemplarSpec.parse(cfg.exemplars)
    cases = resolve_split(source, cfg.split, cfg.split_file)
    seed = cfg.seed if cfg.selection_seed is None else cfg.selection_seed
    where = f"the selection {cfg.exemplars} of {source.name}"

    def choose(label_scans, hashes):  # exemplars need only the labels: chosen before images are read
        chosen = select_exemplars(source, cases, spec, seed, min_pixels, split=cfg.split, scans=label_scans,
                                  file_hashes=hashes, pool_size=cfg.pool_size)
        return [(e["volume"], int(e["slice"])) for e in _apply_excludes(chosen.exemplars, cfg.exclude_exemplars,
                                                                         where)]

    scan = stream_scan(source, cases, workers=workers, progress=progress, choose=choose,
                       pool_size=cfg.pool_size, pool_seed=seed, keep_backgrounds=cfg.kind == "synthesized")
    listing = select_exemplars(source, cases, spec, seed, min_pixels, split=cfg.split, scans=scan.scans,
                               file_hashes=scan.file_hashes, pool_size=cfg.pool_size)
    chosen = ChosenExemplars(listing, _apply_excludes(listing.exemplars, cfg.exclude_exemplars, where), where,
                             dict(scan.exemplar_slices), scan.fingerprint)
    if cfg.kind != "synthesized":
        return chosen
    stored = {ref: scan.backgrounds[ref] for ref in listing.background_pairs() if ref in scan.backgrounds}
    missing = [ref for ref in listing.background_pairs() if ref not in stored]
    if missing:  # the fallback pool (cases without foreground-free slices): a second read
        if not all("erased_pixels" in e for e in listing.background_pool):
            raise RuntimeError("streaming scan lost background slices of the seeded pool sample")
        fallback = [e for e in listing.background_pool if (e["volume"], int(e["slice"])) in set(missing)]
        stored.update(_read_listed(source, [], fallback, workers, progress)[1])
    by_case = {s.volume_id: s for s in scan.scans}
    for v, k in listing.background_pairs():
        sc = by_case[v]
        frac = float(sc.content[k])
        chosen.infos[(v, k)] = BackgroundInfo(k, sc.num_slices, frac, int(round(frac * _slice_pixels(stored[(v, k)]))))
    chosen.backgrounds = stored
    return chosen


def _slice_pixels(encoded: Any) -> int:
    return math.prod(encoded.shape)


def _read_listed(source: Any, exemplars: Sequence[dict[str, Any]], pool: Sequence[dict[str, Any]], workers: int,
                 progress: bool) -> tuple[dict, dict, list[dict[str, Any]]]:
    """Read the slices an exemplar list names: ({ref: (image, label)}, {ref: encoded background},
    per-volume results (fingerprints))."""
    ex: dict[str, set[int]] = {}
    bg: dict[str, set[int]] = {}
    for e in exemplars:
        ex.setdefault(e["volume"], set()).add(int(e["slice"]))
    for e in pool:
        bg.setdefault(e["volume"], set()).add(int(e["slice"]))
    tasks = [(case, sorted(ex.get(case, ())), sorted(bg.get(case, ()))) for case in sorted(set(ex) | set(bg))]
    results = read_cases(source, tasks, workers, progress, "reading exemplars")
    slices = {(r["case"], k): v for r in results for k, v in r["slices"].items()}
    stored = {(r["case"], k): v for r in results for k, v in r["backgrounds"].items()}
    return slices, stored, results


def prepare_slices_job(cfg: BuildConfig, out: Path, *, workers: int, progress: bool, log: Log = log_to_stderr) -> Job:
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
        fingerprint = fingerprint_of(list(pool.map(lambda c: _hash_case(source, c), cases)))
    return Job(out=out, config=cfg, producer=SliceProducer(cfg.kind, source, refs, ids), num_samples=len(refs),
               class_names=tuple(source.class_names), task=source.task, source=source.describe(),
               fingerprint=fingerprint, exemplar_list_meta={"split": cfg.split, "cases": cases},
               volumes=volumes if cfg.kind == "volumes" else None)


def _hash_case(source: Any, case: str) -> dict[str, Any]:
    files = tuple(source.files(case))
    root = Path(source.root) if getattr(source, "root", None) is not None else None
    if files:
        return {"case": case, "files": {relpath(Path(p), root): sha256_file(p) for p in files}}
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
    try:
        return open_described(desc)
    except DataError as exc:
        root = desc.get("root")
        if root_override is None and root and not Path(root).exists():
            # the usual cause: the data moved after the build; say how to point at its new place
            raise DataError(f"{exc} (the dataset was built from {root}; if the source data moved, "
                            "pass --source-root NEW_FOLDER)") from None
        raise


def check_fingerprint(source: Any, fingerprint: dict[str, Any], cases: Sequence[str], where: str,
                      workers: int = 1) -> None:
    """DataError naming the first source file (or generated volume) that changed since the build."""
    results = [_hash_case(source, c) for c in sorted(set(cases))]
    now = fingerprint_of(results)
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
    tasks = [(case, sorted(ks), ()) for case, ks in sorted(needed.items())]
    results = read_cases(source, tasks, workers, progress, "reading source slices")
    return {(r["case"], k): v for r in results for k, v in r["slices"].items()}
