"""Dataset builds: synthesis (or plain slices) -> shards + manifests, in parallel, resumable.

One build turns a *producer* (something that makes sample ``i`` from nothing but ``i`` and the
build's recorded inputs) into a dataset directory (``shared/shards.py`` has the format). Kinds:

- ``synthesized``: cut-paste synthesis from the exemplar bank (``synth build``);
- ``exemplars``: the exemplar slices themselves (``synth build --no-synthesis``);
- ``all-slices``: every slice of the split (``synth build --all-slices``);
- ``volumes``: whole volumes in slice order, with their geometry (``synth pack``).

Determinism: sample ``i`` depends only on (seed, i, exemplar list, background pool, config), and
each worker process builds whole shards, so the output does not depend on ``--workers``.
``--part i/n`` builds a shard-aligned slice of the sample range; :func:`merge_parts` joins parts.

Safety: the output folder is locked (``.lock``, flock, see :mod:`shared.locks`; readers hold it
shared, so a rebuild cannot start under a running fit); shards are
written under temporary names and renamed; each finished shard leaves a sidecar
``.build/shard-XXXXX.json`` (its hashes and sample records) so ``--resume`` keeps the shards whose
sha256 still checks; ``samples.jsonl`` then ``dataset.json`` are written last, atomically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from shared.errors import ConfigError, DataError
from shared.hashing import sha256_path
from shared.locks import LOCK_FILE, FolderLock, LockBusy
from shared.manifest import SCHEMA_VERSION, dumps, read_json, tool_version, write_dataset, write_json_atomic
from shared.shards import (DATASET_FILE, IMAGE_DTYPES, SAMPLES_FILE, SHARD_FORMATS, SHARDS_DIR, ShardWriter,
                           shard_relpath)
from synth.pool import DEFAULT_POOL_SIZE

KINDS = ("synthesized", "exemplars", "all-slices", "volumes")
DEFAULT_SHARD_SIZE = 256
STATE_DIR = ".build"
STATE_FILE = "state.json"
OWNED_ENTRIES = {DATASET_FILE, SAMPLES_FILE, SHARDS_DIR, STATE_DIR}
DEFAULT_NUM_SAMPLES = {"brats": 4500, "synapse": 1800, "transunet": 1800}
# Config keys that name paths on this machine: recorded, but not part of the build identity, so
# parts built on machines with different mounts of the same data can be merged.
PATH_KEYS = ("root", "exemplar_list", "split_file", "source_config", "synthesis_config")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_num_samples(dataset: str, task: str) -> int:
    """The paper's fixed training-set sizes: 4500 (BraTS, single target), 1800 (Synapse, organs)."""
    if dataset in DEFAULT_NUM_SAMPLES:
        return DEFAULT_NUM_SAMPLES[dataset]
    return 4500 if task == "single" else 1800


# --------------------------------------------------------------------------------------------
# Configuration and plan


@dataclass
class BuildConfig:
    """Everything that defines a dataset's content (workers/part/resume do not)."""

    kind: str = "synthesized"
    dataset: str = "demo-brain"
    root: str | None = None
    modality: str = "flair"
    intensity: Any = None  # --intensity: a preset replacing the source's (brats, nifti); None = its own
    source_config: str | None = None
    split: str = "all"
    split_file: str | None = None
    exemplars: str | None = None  # selection spec "150" / "1%"
    exemplar_list: str | None = None  # path of a `synth select` output
    min_pixels: int | None = None
    selection_seed: int | None = None
    exclude_exemplars: list[str] = field(default_factory=list)  # "CASE:SLICE"
    num_samples: int | None = None
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    format: str = "zarr"
    image_dtype: str = "float16"
    synthesis_config: str | None = None
    recipe: str = "extended"  # synthesis recipe (synth.synthesis.RECIPES), before --synthesis-config
    synthesis: dict[str, Any] | None = None  # the resolved synthesis config (recorded in full)
    pool_size: int | None = DEFAULT_POOL_SIZE  # background pool: seeded sample above this (synth/pool.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown build kind {self.kind!r}")
        if self.format not in SHARD_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(SHARD_FORMATS)}, got {self.format!r}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(IMAGE_DTYPES)}, got {self.image_dtype!r}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.pool_size is not None and self.pool_size < 0:
            raise ConfigError(f"--pool-size must be 0 (no limit) or more, got {self.pool_size}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.kind in ("synthesized", "exemplars"):
            if (self.exemplars is None) == (self.exemplar_list is None):
                raise ConfigError("give exactly one of --exemplars N|P% and --exemplar-list FILE")


@dataclass(frozen=True)
class Part:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Part | None":
        if text is None:
            return None
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ConfigError(f"--part must look like i/n (e.g. 0/8), got {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--part {text}: need 0 <= i < n")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def plan_shards(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """(start, count) of every shard of the whole dataset."""
    return [(s, min(shard_size, num_samples - s)) for s in range(0, num_samples, shard_size)]


def part_shards(num_shards: int, part: Part | None) -> range:
    """Shard indices of a part: shard-aligned, contiguous, as even as possible."""
    if part is None:
        return range(num_shards)
    if part.count > num_shards:
        raise ConfigError(f"--part {part}: the dataset has only {num_shards} shard(s); use at most "
                          f"{num_shards} parts or a smaller --shard-size")
    return range(part.index * num_shards // part.count, (part.index + 1) * num_shards // part.count)


# --------------------------------------------------------------------------------------------
# Producers: sample i -> (image float [0, 1], label uint8, record extras)


class Producer:
    kind = ""

    def sample_id(self, i: int) -> str:
        raise NotImplementedError

    def make(self, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        raise NotImplementedError

    def extra_shard_info(self) -> dict[str, Any]:
        return {}


class SynthesisProducer(Producer):
    kind = "synthesized"
    in_range = True  # synthesize() returns images in [0, 1]: the writer skips its clip

    def __init__(self, bank: Any, config: Any, seed: int, task: str):
        self.bank, self.config, self.seed, self.task = bank, config, seed, task

    def sample_id(self, i: int) -> str:
        return f"s{i:06d}"

    def make(self, i: int):
        from synth.synthesis import synthesize

        image, label, record = synthesize(i, self.seed, self.bank, self.config, self.task)
        return image, label, {"kind": self.kind, "synthesis": record_to_dict(record)}


class SliceProducer(Producer):
    """Slices read from the source (exemplars, all slices, packed volumes); volumes cached."""

    def __init__(self, kind: str, source: Any, refs: Sequence[tuple[str, int]], ids: Sequence[str]):
        self.kind, self.source, self.refs, self.ids = kind, source, list(refs), list(ids)
        self._cache: dict[str, Any] = {}
        self._geometry: dict[str, dict[str, Any]] = {}

    def sample_id(self, i: int) -> str:
        return self.ids[i]

    def volume(self, case: str):
        vol = self._cache.get(case)
        if vol is None:
            if len(self._cache) >= 2:  # shards walk volumes in order: two is plenty
                self._cache.pop(next(iter(self._cache)))
            vol = self.source.load(case)
            self._cache[case] = vol
            self._geometry[case] = {"spacing": [float(s) for s in vol.spacing],
                                    "affine": np.asarray(vol.affine, dtype=float).tolist(),
                                    "shape": [int(s) for s in vol.image.shape]}
        return vol

    def make(self, i: int):
        case, k = self.refs[i]
        vol = self.volume(case)
        if not 0 <= k < vol.num_slices:
            raise DataError(f"{case}: slice {k} out of range (volume has {vol.num_slices} slices)")
        return (vol.image[k], vol.label[k],
                {"kind": self.kind, "source": {"volume": case, "slice": int(k)}})

    def extra_shard_info(self) -> dict[str, Any]:
        return {"geometry": dict(self._geometry)}


def record_to_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    if hasattr(record, "to_dict"):
        return record.to_dict()
    return asdict(record)


def class_pixels(label: np.ndarray, class_names: Sequence[str], sample_id: str) -> dict[str, int]:
    """Pixels per class; a label value outside the class set is a DataError naming the sample."""
    n = len(class_names)
    top = int(label.max()) if label.size else 0
    if top >= n:
        raise DataError(f"sample {sample_id}: label value {top} outside the class set {tuple(class_names)}")
    if n <= 16:  # a few compares beat bincount's cast of the whole slice to int64 (~4x)
        fg = [int(np.count_nonzero(label == c)) for c in range(1, n)]
        counts = [label.size - sum(fg), *fg]
    else:
        counts = np.bincount(label.ravel(), minlength=n).tolist()
    return {name: int(c) for name, c in zip(class_names, counts)}


# --------------------------------------------------------------------------------------------
# Output folder: lock, safety checks, resume state


class BuildLock:
    """Exclusive lock on an output folder (``DIR/.lock``, flock; see :mod:`shared.locks`).

    Refused while another build writes the folder or a reader (``train fit``, ``synth verify``)
    reads it. A build killed with -9 leaves the file but not the flock: the next build simply
    takes it (and says so). Atomic by construction: the kernel hands the flock to one process.
    """

    def __init__(self, folder: Path, log: Log = _stderr):
        self.lock = FolderLock(folder, shared=False)
        self.path = self.lock.path
        self.log = log

    @property
    def held(self) -> bool:
        return self.lock.held

    def acquire(self) -> "BuildLock":
        previous = self.lock.owner()
        try:
            self.lock.acquire()
        except LockBusy:
            other = self.lock.owner()
            if other.get("pid"):
                raise DataError(f"{self.path.parent}: another build (pid {other.get('pid')} on {other.get('host')}) "
                                f"is writing to this folder") from None
            raise DataError(f"{self.path.parent}: the dataset is being read (train fit, train eval, synth verify ...); "
                            f"it cannot be rewritten until the reader ends (or write to another folder)") from None
        except OSError as exc:
            raise DataError(f"{self.path.parent}: output folder is not writable ({exc.strerror})") from exc
        pid, host = previous.get("pid"), previous.get("host")
        if isinstance(pid, int) and pid != os.getpid():  # we hold the flock: that build is gone
            self.log(f"note: taking over the stale lock {self.path} of process {pid} on {host}, "
                     f"which is no longer running (killed?)")
        self.lock.write_owner()
        return self

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> "BuildLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_out_outside_source(out: Path, source: dict[str, Any]) -> None:
    """Refuse an output folder inside the source tree: the source readers scan their root, so a
    dataset written there would break every later command on that source."""
    root = source.get("root")
    if not root:
        return
    root_path, out_path = Path(root).resolve(), Path(out).resolve()
    if out_path == root_path or root_path in out_path.parents:
        raise DataError(f"--out {out}: inside the source folder {root_path}; write the dataset elsewhere "
                        f"(the source must stay as it is)")


def make_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{out}: exists and is not a folder") from None
    except OSError as exc:
        raise DataError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")


def clear_output(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless asked; with --overwrite remove only dataset entries."""
    entries = sorted(e.name for e in out.iterdir() if e.name != LOCK_FILE)
    if not entries or resume:
        return
    if not overwrite:
        raise DataError(f"{out}: already exists and is not empty (use --overwrite to replace it, "
                        f"or --resume to continue an interrupted build)")
    foreign = [e for e in entries if e not in OWNED_ENTRIES]
    if foreign:
        raise DataError(f"{out}: --overwrite refused, the folder holds files that are not part of a dataset "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
    # dataset.json first: from here on the folder is visibly incomplete
    for name in (DATASET_FILE, SAMPLES_FILE, SHARDS_DIR, STATE_DIR):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(identity).encode()).hexdigest()


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out += _diff_keys(a[k], b[k], f"{prefix}{k}.")
            else:
                out.append(prefix + k)
    return out


# --------------------------------------------------------------------------------------------
# Worker side (module globals are set in the parent before fork, or by the pool initializer)

_JOB: dict[str, Any] = {}


def _init_pool_worker(job: dict[str, Any] | None) -> None:
    import signal

    # Ctrl-C reaches every process of the group: the parent stops the pool and reports once;
    # workers die quietly (no traceback each) when the pool terminates them (SIGTERM, default).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(job)


def _init_worker(job: dict[str, Any] | None) -> None:
    if job is not None:
        _JOB.clear()
        _JOB.update(job)
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already
    except Exception:
        pass


def _shard_sidecar(out: Path, k: int) -> Path:
    return out / STATE_DIR / f"shard-{k:05d}.json"


def build_shard(k: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build shard k of the current job: synthesize its samples, one bulk write, sidecar."""
    job = _JOB
    out: Path = job["out"]
    producer: Producer = job["producer"]
    class_names = job["class_names"]
    start, count = job["plan"][k]
    in_range = bool(getattr(producer, "in_range", False))
    rel = shard_relpath(k, job["format"])
    records = []
    with ShardWriter(out / rel, fmt=job["format"], image_dtype=job["image_dtype"], overwrite=True,
                     capacity=count) as writer:
        for j in range(count):
            i = start + j
            sid = producer.sample_id(i)
            image, label, extras = producer.make(i)
            label = np.asarray(label)
            if label.dtype != np.uint8:
                label = label.astype(np.uint8)
            counts = class_pixels(label, class_names, sid)
            hashes = writer.add(image, label, in_range=in_range)
            rec = {"id": sid, "shard": k, "index": j, **extras, "sha256": hashes, "class_pixels": counts}
            records.append(rec)
            if progress is not None:
                progress(1)
        result = writer.close()
    entry = {"path": rel, "start": start, "count": count, "sha256": result.sha256, "bytes": result.bytes}
    sidecar = {"shard": entry, "records": records, **producer.extra_shard_info()}
    write_json_atomic(_shard_sidecar(out, k), sidecar, indent=None)
    return {"k": k, "count": count, "bytes": result.bytes}


def _pool_build_shard(k: int) -> dict[str, Any]:
    counter = _JOB.get("counter")

    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    return build_shard(k, progress=tick if counter is not None else None)


# --------------------------------------------------------------------------------------------
# The build driver


@dataclass
class BuildSummary:
    out: Path
    num_samples: int  # samples in this build (or part)
    built: int  # samples written now (resume skips finished shards)
    seconds: float
    bytes_written: int
    kept_shards: int = 0
    already_complete: bool = False

    def line(self) -> str:
        if self.already_complete:
            return f"{self.out}: already complete ({self.num_samples} samples), nothing to do"
        rate = self.built / self.seconds if self.seconds > 0 else float("inf")
        kept = f" ({self.kept_shards} shard(s) kept from the interrupted build)" if self.kept_shards else ""
        return (f"built {self.built} samples in {self.seconds:.2f} s, {rate:.0f} samples/s, "
                f"{self.bytes_written / 1e6:.1f} MB written -> {self.out}{kept}")


@dataclass
class Job:
    """A fully resolved build: what to write, where, and the manifest fields that go with it."""

    out: Path
    config: BuildConfig
    producer: Producer
    num_samples: int  # of the whole dataset
    class_names: tuple[str, ...]
    task: str
    source: dict[str, Any]
    fingerprint: dict[str, Any]
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    background_pool: list[dict[str, Any]] = field(default_factory=list)
    exemplar_list_meta: dict[str, Any] = field(default_factory=dict)
    volumes: list[dict[str, Any]] | None = None  # for kind "volumes": id, start, count, slices

    def identity(self) -> dict[str, Any]:
        config = {k: v for k, v in self.config.to_dict().items() if k not in PATH_KEYS}
        source = {k: v for k, v in self.source.items() if k != "root"}
        return {"kind": self.config.kind, "config": config, "source": source, "num_samples": self.num_samples,
                "fingerprint": self.fingerprint, "exemplars": self.exemplars,
                "background_pool": self.background_pool, "class_names": list(self.class_names)}


def run_job(job: Job, *, workers: int = 1, part: Part | None = None, overwrite: bool = False,
            resume: bool = False, progress: bool = True, log: Log = _stderr) -> BuildSummary:
    """Write ``job`` into ``job.out`` (see module docstring for the safety rules)."""
    t0 = time.perf_counter()
    out = job.out
    cfg = job.config
    plan = plan_shards(job.num_samples, cfg.shard_size)
    todo_shards = part_shards(len(plan), part)
    identity = job.identity()
    key = identity_key(identity)
    check_out_outside_source(out, job.source)
    make_output_dir(out)
    with BuildLock(out, log):
        clear_output(out, overwrite=overwrite, resume=resume)
        state_path = out / STATE_DIR / STATE_FILE
        kept: list[int] = []
        if resume and (out / DATASET_FILE).exists() and not state_path.exists():
            info = read_json(out / DATASET_FILE)
            if info.get("build_key") != key or info.get("part") != _part_info(part, plan, todo_shards):
                raise ConfigError(f"{out}: --resume: the folder holds a finished dataset with a different "
                                  f"configuration (use --overwrite to replace it)")
            log(f"{out}: already complete, nothing to resume")
            return BuildSummary(out, _count(plan, todo_shards), 0, time.perf_counter() - t0, 0,
                                already_complete=True)
        if resume and state_path.exists():
            state = read_json(state_path)
            if state.get("key") != key or state.get("part") != (str(part) if part else None):
                diff = _diff_keys(state.get("identity", {}), identity) or ["part"]
                raise ConfigError(f"{out}: --resume with a different configuration than the interrupted build "
                                  f"(differs in: {', '.join(diff[:6])}); use --overwrite to start over")
            kept = _check_finished_shards(out, todo_shards, plan, cfg.format, log)
        elif resume and any(e for e in out.iterdir() if e.name != LOCK_FILE):
            raise DataError(f"{out}: --resume: no build state found ({STATE_DIR}/{STATE_FILE}); "
                            f"use --overwrite to start over")
        (out / SHARDS_DIR).mkdir(exist_ok=True)
        (out / STATE_DIR).mkdir(exist_ok=True)
        _remove_temporaries(out)
        if (out / DATASET_FILE).exists():  # resuming a half-rewritten folder: not complete any more
            (out / DATASET_FILE).unlink()
        write_json_atomic(state_path, {"key": key, "part": str(part) if part else None, "identity": identity,
                                       "config": cfg.to_dict()})
        todo = [k for k in todo_shards if k not in set(kept)]
        n_todo = sum(plan[k][1] for k in todo)
        try:
            with _sigterm_as_interrupt():
                written = _run_shards(job, plan, todo, workers=workers, progress=progress,
                                      initial=_count(plan, kept), total=_count(plan, todo_shards))
        except KeyboardInterrupt:
            done = len(list((out / STATE_DIR).glob("shard-*.json")))
            log(f"\ninterrupted: {done} finished shard(s) kept in {out}; continue with the same command "
                f"and --resume")
            raise
        _finalize(job, plan, todo_shards, part, key)
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return BuildSummary(out, _count(plan, todo_shards), n_todo, time.perf_counter() - t0, written,
                        kept_shards=len(kept))


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a batch system's time limit) stops a build like Ctrl-C: workers stopped,
    finished shards kept for --resume, the lock released, one message."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _count(plan: list[tuple[int, int]], shards: Iterable[int]) -> int:
    return sum(plan[k][1] for k in shards)


def _part_info(part: Part | None, plan, shards: range) -> dict[str, Any] | None:
    if part is None:
        return None
    start = plan[shards.start][0]
    stop = plan[shards.stop - 1][0] + plan[shards.stop - 1][1]
    return {"index": part.index, "count": part.count, "start": start, "stop": stop,
            "total": plan[-1][0] + plan[-1][1], "shards": [shards.start, shards.stop]}


def _remove_temporaries(out: Path) -> None:
    for p in (out / SHARDS_DIR).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _check_finished_shards(out: Path, shards: range, plan, fmt: str, log: Log) -> list[int]:
    """Shards of an interrupted build that are complete and whose sha256 still checks."""
    kept, dropped = [], []
    for k in shards:
        sidecar_path = _shard_sidecar(out, k)
        shard_path = out / shard_relpath(k, fmt)
        if not sidecar_path.exists() or not shard_path.exists():
            continue
        try:
            sidecar = read_json(sidecar_path)
            ok = (sidecar["shard"]["sha256"] == sha256_path(shard_path)
                  and (sidecar["shard"]["start"], sidecar["shard"]["count"]) == tuple(plan[k]))
        except (DataError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(k)
        else:
            dropped.append(k)
            sidecar_path.unlink(missing_ok=True)
    log(f"resume: keeping {len(kept)} finished shard(s)"
        + (f", rebuilding {len(dropped)} whose hash did not check ({', '.join(map(str, dropped[:5]))})" if dropped else ""))
    return kept


def _run_shards(job: Job, plan, todo: list[int], *, workers: int, progress: bool, initial: int,
                total: int) -> int:
    from tqdm import tqdm

    jobdict = {"out": job.out, "producer": job.producer, "class_names": job.class_names, "plan": plan,
               "format": job.config.format, "image_dtype": job.config.image_dtype}
    written = 0
    bar = tqdm(total=total, initial=initial, unit="sample", desc=f"{job.config.kind}", dynamic_ncols=True,
               disable=not progress, smoothing=0.1)
    try:
        workers = max(1, min(workers, len(todo)))
        if workers == 1:
            _init_worker(jobdict)
            for k in todo:
                written += build_shard(k, progress=bar.update)["bytes"]
        else:
            import multiprocessing as mp

            if "fork" in mp.get_all_start_methods():
                ctx = mp.get_context("fork")
                _init_worker(jobdict)  # inherited by the forked workers: the bank is not copied
                init_arg = None
            else:
                ctx = mp.get_context("spawn")
                init_arg = jobdict
            # per-sample progress from the workers: a shared counter, polled by a thread
            counter = ctx.Value("q", 0)
            _JOB["counter"] = counter
            if init_arg is not None:
                init_arg["counter"] = counter
            stop = threading.Event()
            seen = [0]

            def poll() -> None:
                while not stop.wait(0.2):
                    value = counter.value
                    bar.update(value - seen[0])
                    seen[0] = value

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            try:
                with ctx.Pool(workers, initializer=_init_pool_worker, initargs=(init_arg,)) as pool:
                    for res in pool.imap_unordered(_pool_build_shard, todo):
                        written += res["bytes"]
            finally:
                stop.set()
                poller.join()
            bar.update(counter.value - seen[0])
    finally:
        bar.close()
        _JOB.clear()
    return written


def _finalize(job: Job, plan, shards: range, part: Part | None, key: str) -> None:
    out = job.out
    entries, records, geometry = [], [], {}
    for k in shards:
        sidecar = read_json(_shard_sidecar(out, k))
        entries.append(sidecar["shard"])
        records.extend(sidecar["records"])
        geometry.update(sidecar.get("geometry") or {})
    info = dataset_info(job, entries, key, part=_part_info(part, plan, shards), geometry=geometry)
    write_dataset(out, info, records)


def dataset_info(job: Job, shards: list[dict[str, Any]], key: str, *, part: dict[str, Any] | None,
                 geometry: dict[str, Any]) -> dict[str, Any]:
    cfg = job.config
    info: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": tool_version(),
        "kind": cfg.kind,
        "format": cfg.format,
        "image_dtype": cfg.image_dtype,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "source": job.source,
        "class_names": list(job.class_names),
        "task": job.task,
        "fingerprint": job.fingerprint,
        "exemplar_list": job.exemplar_list_meta,
        "exemplars": job.exemplars,
        "background_pool": job.background_pool,
        "build_key": key,
        "environment": environment(),
        "num_samples": job.num_samples if part is None else part["stop"] - part["start"],
        "shards": shards,
    }
    if part is not None:
        info["part"] = part
    if job.volumes is not None:
        vols = []
        for v in job.volumes:
            g = geometry.get(v["id"], {})
            vols.append({**v, "spacing": g.get("spacing"), "affine": g.get("affine"), "shape": g.get("shape")})
        if part is None:
            missing = [v["id"] for v in vols if v["shape"] is None]
            if missing:
                raise DataError(f"{job.out}: no geometry recorded for volume(s) {', '.join(missing[:3])}")
        info["volumes"] = vols
    return info


def environment() -> dict[str, str]:
    """Versions of the libraries whose code decides the bytes (resampling, codecs): byte-identity
    of rebuilds and replays holds for equal versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": platform.python_version()}
    for dist in ("numpy", "opencv-python-headless", "scipy", "zarr", "numcodecs", "h5py"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return env


# --------------------------------------------------------------------------------------------
# Merging parts


def merge_parts(parts: Sequence[Path], out: Path, *, overwrite: bool = False, move: bool = False,
                log: Log = _stderr) -> BuildSummary:
    """Join part datasets (``synth build --part i/n``) into one dataset at ``out``."""
    t0 = time.perf_counter()
    if not parts:
        raise ConfigError("merge: give at least one part folder")
    infos = []
    for p in parts:
        p = Path(p)
        path = p / DATASET_FILE
        if not path.exists():
            raise DataError(f"{path}: missing; {p} is not a finished part (rerun its build with --resume)")
        info = read_json(path)
        if "part" not in info:
            raise DataError(f"{path}: not a part of a dataset (built without --part)")
        infos.append((p, info))
    keys = {info["build_key"] for _, info in infos}
    if len(keys) != 1:
        p0, i0 = infos[0]
        for p, info in infos[1:]:
            if info["build_key"] != i0["build_key"]:
                diff = _diff_keys(_identity_of(i0), _identity_of(info))
                raise DataError(f"merge: {p} was built with a different configuration than {p0} "
                                f"(differs in: {', '.join(diff[:6]) or 'build key'})")
    envs = {dumps(info.get("environment")) for _, info in infos}
    if len(envs) > 1:
        log("note: the parts were built with different library versions (dataset.json 'environment'); "
            "the merged dataset records the first part's")
    infos.sort(key=lambda x: x[1]["part"]["start"])
    total = infos[0][1]["part"]["total"]
    pos = 0
    for p, info in infos:
        start, stop = info["part"]["start"], info["part"]["stop"]
        if start < pos:
            raise DataError(f"merge: {p} covers samples [{start}, {stop}) which overlap another part")
        if start > pos:
            raise DataError(f"merge: samples [{pos}, {start}) are missing (no part covers them)")
        pos = stop
    if pos != total:
        raise DataError(f"merge: samples [{pos}, {total}) are missing (no part covers them)")
    for p, info in infos:
        for s in info["shards"]:
            sp = p / s["path"]
            if not sp.exists():
                raise DataError(f"{sp}: shard missing")
            if sha256_path(sp) != s["sha256"]:
                raise DataError(f"{sp}: sha256 does not match {p / DATASET_FILE} (corrupted copy?)")
    make_output_dir(out)
    written = 0
    with BuildLock(out, log):
        clear_output(out, overwrite=overwrite, resume=False)
        (out / SHARDS_DIR).mkdir()
        shards, records = [], []
        for p, info in infos:
            for s in info["shards"]:
                src, dst = p / s["path"], out / s["path"]
                if move:
                    os.replace(src, dst) if _same_fs(src, out) else shutil.move(str(src), str(dst))
                elif src.is_dir():
                    shutil.copytree(src, dst)
                else:
                    shutil.copy2(src, dst)
                written += int(s["bytes"])
                shards.append(s)
            with open(p / SAMPLES_FILE, encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f if line.strip())
        info = dict(infos[0][1])
        info.pop("part", None)
        info["shards"] = shards
        info["num_samples"] = total
        if info.get("volumes") is not None:
            geometry = {}
            for _p, pi in infos:
                for v in pi.get("volumes") or []:
                    if v.get("shape") is not None:
                        geometry[v["id"]] = v
            info["volumes"] = [{**v, **{k: geometry.get(v["id"], v).get(k) for k in ("spacing", "affine", "shape")}}
                               for v in info["volumes"]]
        write_dataset(out, info, records)
    return BuildSummary(out, total, total, time.perf_counter() - t0, written)


def _identity_of(info: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in (info.get("config") or {}).items() if k not in PATH_KEYS}
    return {"config": config, "fingerprint": info.get("fingerprint"), "exemplars": info.get("exemplars"),
            "background_pool": info.get("background_pool"), "kind": info.get("kind")}


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
