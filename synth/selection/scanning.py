"""Streaming scans of a source: memory bounded by the workers, not by the number of patients.

Two passes over the cases, each one volume at a time per worker process (``--workers``), with a
progress bar in volumes:

1. labels (small files): per-slice class pixel counts and the sha256 of the case's files. That
   is all exemplar selection needs, so the exemplars are chosen here, before any image is decoded;
   every foreground-free slice gets its pool key (``synth.selection.background_pool.pool_key``).
2. images, decoded a few slices at a time (``Source.image_chunks``): the per-slice content
   fraction (the background rule), the exemplar slices (plus their labels, read again only for
   volumes holding an exemplar) and the background candidates whose key can still make the
   seeded pool sample (:class:`synth.selection.background_pool.PoolSampler`; its threshold, capped early by
   :class:`synth.selection.background_pool.PoolCap`, is shared with the workers; a qualifying slice above it is
   reported by its key alone and read again at the end only if it makes the sample),
   stored exactly and compactly (``synth.base.slice_store.encode_slice``) and cropped to its nonzero box
   (``synth.base.slice_store.CroppedSlice``, ~1/5 of a BraTS slice): how workers send it and how the bank
   keeps it (nothing is made whole again). Integer scans under the per-slice min-max preset
   (BraTS FLAIR) take an exact shortcut: the content fractions come from integer passes over the
   raw volume and only the kept slices are made float32 (``_scan_integers``; the same numbers and
   encodings as the float32 chunks); float32 scans under that preset (z-scored FLAIR) count content on the raw
   floats the same way (``_scan_floats``).

So each image is decoded once, nothing larger than one volume's label and a few float32 slices is
alive per worker, and the parent holds the scans (a few numbers per slice), the exemplar slices
and at most ``pool_size`` background slices. The result does not depend on ``workers``.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from shared.allocator import reusing_freed_memory
from shared.errors import DataError
from shared.hashing import sha256_array, sha256_file
from synth.base.parallel import Worker, context, map_tasks
from shared.intensity import SLICE_MINMAX, ExactSliceMinMax, apply_intensity, intensity_chunks, validate_preset
from synth.base.slice_store import CroppedSlice, EncodedSlice, encode_minmax_slice, encode_slice
from synth.selection.background_pool import PoolCap, PoolSampler, pool_key
from synth.selection.rules import (BACKGROUND_MIN_CONTENT, VolumeScan, content_fraction, content_fraction_exact,
                             content_fraction_float)

def relpath(path: Path, root: Path | None) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)


def hash_case_files(source: Any, case: str) -> tuple[dict[str, str], dict[str, str]]:
    """({path relative to the root: sha256}, {str(path): sha256}) of a case's files."""
    root = Path(source.root) if getattr(source, "root", None) is not None else None
    rel, by_path = {}, {}
    for p in source.files(case):
        digest = sha256_file(p)
        rel[relpath(Path(p), root)] = digest
        by_path[str(p)] = digest
    return rel, by_path


def map_volumes(fn: Callable[[Worker, tuple], Any], tasks: Sequence[tuple], workers: int, progress: bool, desc: str,
                state: Any = None) -> Iterable[Any]:
    """``fn(worker, task)`` over ``tasks`` on up to ``workers`` processes (:func:`synth.base.parallel.map_tasks`),
    results in task order (a generator: the caller consumes each result before the next arrives),
    with a progress bar in volumes. ``state`` is the workers' state (:class:`ScanState`)."""
    from tqdm import tqdm

    if workers > 1 and len(tasks) > 1 and state is not None:
        # once here, inherited by the forked workers: nibabel took ~0.1 s of CPU in every worker of every pass
        for name in getattr(state.source, "reader_modules", ()):
            importlib.import_module(name)
    bar = tqdm(total=len(tasks), desc=desc, unit="vol", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for res in map_tasks(fn, tasks, workers=workers, state=state):
            yield res
            bar.update(1)
    finally:
        bar.close()


@dataclass(frozen=True)
class ScanState:
    """What every task of a pass shares, as the workers' state (inherited by forked workers,
    pickled once per spawned one) rather than in each task: the source, whose pickle takes ~1.3 ms
    to load (its table of case paths; 384 tasks for 240 patients), and the pool sampler's shared
    threshold (a ``multiprocessing.Value``; None when nothing is sampled)."""

    source: Any
    threshold: Any = None


def _current_threshold(state: ScanState) -> int:
    return (1 << 64) - 1 if state.threshold is None else int(state.threshold.value)


# --------------------------------------------------------------------------------------------
# Worker tasks


def _label_task(worker: Worker, args: tuple) -> dict[str, Any]:
    """Pass 1: one case's labels -> per-slice class counts, label shape, file hashes."""
    source, (case,) = worker.state.source, args
    shape, counts = source.label_counts(case)
    out: dict[str, Any] = {"case": case, "shape": shape, "counts": counts}
    if source.files(case):
        out["files"], out["hashes"] = hash_case_files(source, case)
    return out


def _image_task(worker: Worker, args: tuple) -> dict[str, Any]:
    """Pass 2: one case's image -> content per slice, exemplar slices, pool candidates (the
    worker's state, :class:`ScanState`: the source and the pool sampler's shared threshold)."""
    source = worker.state.source
    case, label_shape, exemplar_ks, candidates = args
    raw = source.raw_image(case)  # read once: the shortcut or the float32 chunks start from it
    if raw is None:
        shape, chunks = source.image_chunks(case)
    else:
        shape, chunks = raw.shape, intensity_chunks(raw, source.intensity)  # == source.image_chunks(case)
    _check_shape(source, case, shape, label_shape)
    minmax = ExactSliceMinMax.of(raw, source.intensity) if raw is not None else None
    floats = (raw is not None and raw.dtype == np.float32 and raw.ndim == 3
              and validate_preset(source.intensity) == SLICE_MINMAX)
    if minmax is not None:
        image_pass = "integers"
        content, images, backgrounds, deferred = _scan_integers(minmax, exemplar_ks, candidates, worker)
    elif floats:
        image_pass = "floats"
        content, images, backgrounds, deferred = _scan_floats(raw, exemplar_ks, candidates, worker)
    else:
        image_pass = "chunks"
        content, images, backgrounds, deferred = _scan_chunks(shape, chunks, exemplar_ks, candidates, worker)
    want = set(exemplar_ks)
    # each candidate's nonzero box (~1/5 on BraTS): what a worker pickles and the bank keeps
    backgrounds = [(key, k, CroppedSlice.of(encoded)) for key, k, encoded in backgrounds]
    out: dict[str, Any] = {"case": case, "content": content, "backgrounds": backgrounds, "deferred": deferred,
                           "exemplars": {}, "image_pass": image_pass}
    if want:
        labels = source.label_slices(case, sorted(want))
        out["exemplars"] = {k: (images[k], labels[k]) for k in sorted(want)}
    if not source.files(case):  # generated source: fingerprint the arrays
        vol = source.load(case)
        h = hashlib.sha256()
        h.update(sha256_array(vol.image).encode())
        h.update(sha256_array(vol.label).encode())
        out["arrays"] = h.hexdigest()
    return out


def _check_shape(source: Any, case: str, shape: Sequence[int], label_shape: Sequence[int]) -> None:
    if tuple(shape) != tuple(label_shape):
        files = source.files(case)
        where = files[0] if files else case
        raise DataError(f"{where}: image shape {tuple(shape[::-1])} does not match the label's "
                        f"{tuple(label_shape[::-1])}")


def _qualifies(key: int | None, content: float) -> bool:
    """A foreground-free slice (it has a pool key) with real content: a pool candidate."""
    return key is not None and content >= BACKGROUND_MIN_CONTENT


def _read_now(key: int, worker: Worker) -> bool:
    """A qualifying slice is encoded and sent when its key is within the shared bound (the pool
    sampler's threshold, capped by :class:`synth.selection.background_pool.PoolCap`; read fresh: it only decreases);
    any other is reported by its key alone (deferred)."""
    return key <= _current_threshold(worker.state)


def _sort_candidate(key: int | None, k: int, content: float, encode: Callable[[], EncodedSlice], worker: Worker,
                    backgrounds: list[tuple[int, int, EncodedSlice]], deferred: list[tuple[int, int]]) -> None:
    """Slice ``k`` into ``backgrounds`` (encoded now) or ``deferred`` (its key alone) when it
    qualifies; nothing otherwise."""
    if _qualifies(key, content):
        if _read_now(key, worker):
            backgrounds.append((key, k, encode()))
        else:
            deferred.append((key, k))


def _scan_chunks(shape: Sequence[int], chunks: Iterable[tuple[int, np.ndarray]], exemplar_ks: Sequence[int],
                 candidates: Sequence[tuple[int, int]], worker: Worker):
    """The general image pass: float32 chunks of a few slices (any source, any preset)."""
    content = np.zeros(shape[0], dtype=np.float64)
    want = set(exemplar_ks)
    keys = dict(candidates)
    images: dict[int, np.ndarray] = {}
    backgrounds: list[tuple[int, int, EncodedSlice]] = []
    deferred: list[tuple[int, int]] = []
    for k0, chunk in chunks:
        frac = content_fraction(chunk)
        content[k0:k0 + len(frac)] = frac
        for i in range(len(frac)):
            k = k0 + i
            if k in want:
                images[k] = np.array(chunk[i], dtype=np.float32)  # a copy: the chunk is freed
            _sort_candidate(keys.get(k), k, frac[i], lambda: encode_slice(chunk[i]), worker, backgrounds, deferred)
    return content, images, backgrounds, deferred


def _scan_integers(minmax: ExactSliceMinMax, exemplar_ks: Sequence[int], candidates: Sequence[tuple[int, int]],
                   worker: Worker):
    """The image pass of an integer scan under per-slice min-max (BraTS FLAIR): content fractions
    from integer passes, float32 only for the exemplar slices; the same numbers and encodings as
    :func:`_scan_chunks` (``content_fraction_exact``, ``encode_minmax_slice``)."""
    content = content_fraction_exact(minmax)
    images = {k: minmax.image(k) for k in exemplar_ks}
    backgrounds: list[tuple[int, int, EncodedSlice]] = []
    deferred: list[tuple[int, int]] = []
    for k, key in candidates:
        _sort_candidate(key, k, content[k], lambda: encode_minmax_slice(minmax, k), worker, backgrounds, deferred)
    return content, images, backgrounds, deferred


def _scan_floats(raw: np.ndarray, exemplar_ks: Sequence[int], candidates: Sequence[tuple[int, int]],
                 worker: Worker):
    """The image pass of a float32 scan under per-slice min-max (the z-scored BraTS FLAIRs): content
    fractions from one comparison per voxel (``content_fraction_float``), float32 slices made only
    for the exemplars and the candidates read now; the same numbers and encodings as
    :func:`_scan_chunks` (the preset is per slice, so a slice alone equals it in any chunk)."""
    content = content_fraction_float(raw)

    def image(k: int) -> np.ndarray:
        return apply_intensity(raw[k:k + 1], SLICE_MINMAX)[0]

    images = {k: image(k) for k in exemplar_ks}
    backgrounds: list[tuple[int, int, EncodedSlice]] = []
    deferred: list[tuple[int, int]] = []
    for k, key in candidates:
        _sort_candidate(key, k, content[k], lambda: encode_slice(image(k)), worker, backgrounds, deferred)
    return content, images, backgrounds, deferred


# --------------------------------------------------------------------------------------------
# The scan


@dataclass
class StreamScan:
    scans: list[VolumeScan]  # full scans (counts + content), in case order
    exemplar_slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    backgrounds: dict[tuple[str, int], CroppedSlice]  # the sampled strict pool candidates
    fingerprint: dict[str, Any]
    file_hashes: dict[str, str]  # str(path) -> sha256
    chosen: list[tuple[str, int]] = field(default_factory=list)  # exemplars chosen from the labels
    candidates_offered: int = 0  # pool candidates encoded and offered in the image pass
    volumes_read_again: int = 0  # volumes read again for deferred slices that made the sample
    # case -> how its image pass read it: "integers" (exact integer shortcut), "floats" (raw
    # float32 shortcut) or "chunks" (the preset's float32 chunks); the shortcuts give the chunks' numbers
    image_passes: dict[str, str] = field(default_factory=dict)


def stream_scan(source: Any, cases: Sequence[str], *, workers: int, progress: bool,
                choose: Callable[[list[VolumeScan], dict[str, str]], Iterable[tuple[str, int]]] | None = None,
                pool_size: int | None = None, pool_seed: int = 0, keep_backgrounds: bool = False) -> StreamScan:
    """Scan ``cases`` in two streaming passes (module docstring).

    ``choose(label_scans, file_hashes)`` returns the exemplar slices to keep (label scans carry
    zero content); with ``keep_backgrounds``, the strict background candidates of the seeded pool
    sample of size ``pool_size`` (None/0: all) are kept too.
    """
    with reusing_freed_memory():  # volume-sized buffers, once per volume: reuse them (shared/allocator.py)
        return _stream_scan(source, list(cases), workers, progress, choose, pool_size, pool_seed, keep_backgrounds)


def _stream_scan(source: Any, cases: list[str], workers: int, progress: bool,
                 choose: Callable[[list[VolumeScan], dict[str, str]], Iterable[tuple[str, int]]] | None,
                 pool_size: int | None, pool_seed: int, keep_backgrounds: bool) -> StreamScan:
    label_results = list(map_volumes(_label_task, [(c,) for c in cases], workers, progress,
                                     f"labels {source.name}", ScanState(source)))
    files: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for r in label_results:
        files.update(r.get("files") or {})
        hashes.update(r.get("hashes") or {})
    label_scans = [VolumeScan(r["case"], r["counts"], np.zeros(r["counts"].shape[0])) for r in label_results]
    chosen = sorted(set(choose(label_scans, hashes))) if choose is not None else []
    by_case: dict[str, list[int]] = {}
    for case, k in chosen:
        by_case.setdefault(case, []).append(int(k))
    tasks = []
    for r, scan in zip(label_results, label_scans):
        candidates = ()
        if keep_backgrounds:
            free = np.flatnonzero(scan.foreground == 0)
            candidates = tuple((int(k), pool_key(pool_seed, r["case"], int(k))) for k in free)
        tasks.append((r["case"], r["shape"], tuple(by_case.get(r["case"], ())), candidates))
    sampler = PoolSampler(pool_size)
    cap = PoolCap(pool_size, [key for task in tasks for _k, key in task[3]])
    threshold = _shared_threshold(workers, len(tasks))
    threshold.value = min(sampler.threshold, cap.value)
    exemplar_slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    contents: dict[str, np.ndarray] = {}
    arrays: dict[str, str] = {}
    shapes = {task[0]: task[1] for task in tasks}
    encoded_offers = 0
    image_passes: dict[str, str] = {}
    candidate_keys = {task[0]: dict(task[3]) for task in tasks}
    for res, task in zip(map_volumes(_image_task, tasks, workers, progress, f"images {source.name}",
                                     ScanState(source, threshold)), tasks):
        case = res["case"]
        contents[case] = res["content"]
        image_passes[case] = res["image_pass"]
        for k, pair in res["exemplars"].items():
            exemplar_slices[(case, k)] = pair
        for key, k, encoded in res["backgrounds"]:
            sampler.offer(key, case, k, encoded)
        encoded_offers += len(res["backgrounds"])
        for key, k in res["deferred"]:
            sampler.offer(key, case, k, None)  # a place in the sample; read again if it keeps it
        if "arrays" in res:
            arrays[case] = res["arrays"]
        cap.observe(len(task[3]), len(res["backgrounds"]) + len(res["deferred"]))
        threshold.value = min(sampler.threshold, cap.value)
    kept = sampler.items()
    reread = _read_deferred(source, kept, shapes, candidate_keys, workers, progress)
    scans = [VolumeScan(s.volume_id, s.counts, contents[s.volume_id]) for s in label_scans]
    fingerprint = {"algorithm": "sha256", "files": dict(sorted(files.items())), "arrays": dict(sorted(arrays.items()))}
    backgrounds = {ref: reread.get(ref, item) for ref, item in kept.items()}
    return StreamScan(scans, exemplar_slices, backgrounds, fingerprint, hashes, chosen, encoded_offers,
                      len({v for (v, _k), item in kept.items() if item is None}), image_passes)


def _read_deferred(source: Any, kept: dict[tuple[str, int], Any], shapes: dict[str, Any],
                   keys: dict[str, dict[int, int]], workers: int, progress: bool) -> dict[tuple[str, int], Any]:
    """The deferred slices that made the sample (kept as None), read again: one task per volume,
    with no bound, so each is encoded exactly as in the first pass."""
    missing: dict[str, list[int]] = {}
    for (case, k), item in kept.items():
        if item is None:
            missing.setdefault(case, []).append(k)
    if not missing:
        return {}
    tasks = [(case, shapes[case], (), tuple((k, keys[case][k]) for k in sorted(ks))) for case, ks in missing.items()]
    found: dict[tuple[str, int], Any] = {}
    for res in map_volumes(_image_task, tasks, workers, progress, f"images {source.name} (again)", ScanState(source)):
        for _key, k, encoded in res["backgrounds"]:
            found[(res["case"], k)] = encoded
    lost = [ref for case, ks in missing.items() for ref in ((case, k) for k in ks) if ref not in found]
    if lost:  # the same volume read twice gave another content fraction: the file changed under the scan
        raise DataError(f"{source.name}: slices {lost[:3]} qualified for the background pool on the first read "
                        f"but not on the second (did the files change during the scan?)")
    return found


def _shared_threshold(workers: int, n_tasks: int):
    if min(workers, n_tasks) <= 1:
        return _LocalValue()
    return context().Value("Q", (1 << 64) - 1, lock=False)


class _LocalValue:
    """Stand-in for ``multiprocessing.Value`` when everything runs in this process."""

    def __init__(self) -> None:
        self.value = (1 << 64) - 1
