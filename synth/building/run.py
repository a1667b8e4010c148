"""Dataset builds: a job's samples -> shards + manifests, in parallel, resumable.

One build turns a *producer* (:mod:`synth.building.producers`: something that makes sample ``i`` from
nothing but ``i`` and the build's recorded inputs) into a dataset directory (``shared/shards.py``
has the format). Kinds:

- ``synthesized``: cut-paste synthesis from the exemplar bank (``synth build``);
- ``exemplars``: the exemplar slices themselves (``synth build --no-synthesis``);
- ``all-slices``: every slice of the split (``synth build --all-slices``);
- ``volumes``: whole volumes in slice order, with their geometry (``synth pack``).

Where things are: the configuration and shard plan in :mod:`synth.building.spec`, resolving a request
into a :class:`~synth.building.spec.Job` in :mod:`synth.building.jobs`, the output folder's lock and resume
state in :mod:`synth.building.outdir`, the manifests in :mod:`synth.building.manifests`, ``synth merge`` in
:mod:`synth.building.merge`, the worker processes in :mod:`synth.base.parallel`. This module drives a build.

Determinism: sample ``i`` depends only on (seed, i, exemplar list, background pool, config), and
each worker process builds whole shards, so the output does not depend on ``--workers``.
``--part i/n`` builds a shard-aligned slice of the sample range; :func:`synth.building.merge.merge_parts`
joins parts.

Safety: the output folder is locked (see :mod:`synth.building.outdir`); shards are written under temporary
names and renamed; each finished shard leaves a sidecar ``.build/shard-XXXXX.json`` (its hashes
and sample records) so ``--resume`` keeps the shards whose sha256 still checks; ``samples.jsonl``
then ``dataset.json`` are written last, atomically.
"""
from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_write_text, read_json
from shared.locks import LOCK_FILE
from shared.manifest import dumps, jsonl_text
from shared.shards import DATASET_FILE, SHARDS_DIR, ShardWriter, shard_relpath
from synth.building.spec import (BuildSummary, Job, Log, Part, count_samples, diff_keys, identity_key, log_to_stderr,
                             part_info, part_shards, plan_shards)
from synth.audit.info import placement_digest
from synth.building.manifests import finalize
from synth.building.outdir import (STATE_DIR, STATE_FILE, BuildLock, check_finished_shards, check_out_outside_source,
                          clear_output, make_output_dir, remove_temporaries, shard_sidecar)
from synth.base.parallel import Worker, map_tasks
from synth.building.producers import Producer, class_pixels


def run_job(job: Job, *, workers: int = 1, part: Part | None = None, overwrite: bool = False,
            resume: bool = False, progress: bool = True, log: Log = log_to_stderr) -> BuildSummary:
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
        kept = _resume_point(job, key, identity, part, plan, todo_shards, log) if resume else []
        if kept is None:
            return BuildSummary(out, count_samples(plan, todo_shards), 0, time.perf_counter() - t0, 0,
                                already_complete=True)
        (out / SHARDS_DIR).mkdir(exist_ok=True)
        (out / STATE_DIR).mkdir(exist_ok=True)
        remove_temporaries(out)
        if (out / DATASET_FILE).exists():  # resuming a half-rewritten folder: not complete any more
            (out / DATASET_FILE).unlink()
        state = {"key": key, "part": str(part) if part else None, "identity": identity, "config": cfg.to_dict()}
        atomic_write_text(out / STATE_DIR / STATE_FILE, dumps(state, indent=2) + "\n")
        todo = [k for k in todo_shards if k not in set(kept)]
        try:
            with _sigterm_as_interrupt():
                written, placement = run_shards(job, plan, todo, workers=workers, progress=progress,
                                                initial=count_samples(plan, kept),
                                                total=count_samples(plan, todo_shards))
        except KeyboardInterrupt:
            done = len(list((out / STATE_DIR).glob("shard-*.json")))
            log(f"\ninterrupted: {done} finished shard(s) kept in {out}; continue with the same command "
                f"and --resume")
            raise
        finalize(job, plan, todo_shards, part, key)
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return BuildSummary(out, count_samples(plan, todo_shards), count_samples(plan, todo), time.perf_counter() - t0,
                        written, kept_shards=len(kept), placement=None if kept else placement)


def _resume_point(job: Job, key: str, identity: dict[str, Any], part: Part | None, plan, shards: range,
                  log: Log) -> list[int] | None:
    """``--resume``: the finished shards to keep, or None when the folder already holds this very
    dataset; ConfigError/DataError when it holds another build's state."""
    out = job.out
    state_path = out / STATE_DIR / STATE_FILE
    if (out / DATASET_FILE).exists() and not state_path.exists():
        info = read_json(out / DATASET_FILE)
        if info.get("build_key") != key or info.get("part") != part_info(part, plan, shards):
            raise ConfigError(f"{out}: --resume: the folder holds a finished dataset with a different "
                              f"configuration (use --overwrite to replace it)")
        log(f"{out}: already complete, nothing to resume")
        return None
    if state_path.exists():
        state = read_json(state_path)
        if state.get("key") != key or state.get("part") != (str(part) if part else None):
            diff = diff_keys(state.get("identity", {}), identity) or ["part"]
            raise ConfigError(f"{out}: --resume with a different configuration than the interrupted build "
                              f"(differs in: {', '.join(diff[:6])}); use --overwrite to start over")
        return check_finished_shards(out, shards, plan, job.config.format, log)
    if any(e for e in out.iterdir() if e.name != LOCK_FILE):
        raise DataError(f"{out}: --resume: no build state found ({STATE_DIR}/{STATE_FILE}); "
                        f"use --overwrite to start over")
    return []


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


# --------------------------------------------------------------------------------------------
# Shards: one task per shard, on the worker processes of synth.base.parallel


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to build any shard of a job (its state in :func:`synth.base.parallel.map_tasks`)."""

    out: Path
    producer: Producer
    class_names: tuple[str, ...]
    plan: list[tuple[int, int]]
    format: str
    image_dtype: str

    @classmethod
    def of(cls, job: Job, plan: list[tuple[int, int]]) -> "ShardJob":
        return cls(job.out, job.producer, tuple(job.class_names), plan, job.config.format, job.config.image_dtype)


def run_shards(job: Job, plan, todo: list[int], *, workers: int, progress: bool, initial: int,
               total: int) -> tuple[int, list[dict[str, Any]]]:
    """Build shards ``todo`` of ``job`` on up to ``workers`` processes: (bytes written, the
    samples' placement digests in shard order, for the end-of-build report). The progress bar
    counts samples (``initial`` already done of ``total``)."""
    from tqdm import tqdm

    written = 0
    digests: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=total, initial=initial, unit="sample", desc=f"{job.config.kind}", dynamic_ncols=True,
               disable=not progress, smoothing=0.1)
    try:
        for res in map_tasks(_shard_task, todo, workers=workers, state=ShardJob.of(job, plan), ordered=False,
                             on_progress=bar.update):
            written += res["bytes"]
            digests[res["k"]] = res["placement"]
    finally:
        bar.close()
    return written, [d for k in sorted(digests) for d in digests[k]]


def _shard_task(worker: Worker, k: int) -> dict[str, Any]:
    return build_shard(worker.state, k, progress=worker.tick)


def build_shard(job: ShardJob, k: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build shard k of ``job``: make its samples, one bulk write, then its sidecar (the shard's
    entry and sample records, read back by :func:`synth.building.manifests.finalize`)."""
    start, count = job.plan[k]
    producer = job.producer
    in_range = bool(getattr(producer, "in_range", False))
    rel = shard_relpath(k, job.format)
    records = []
    with ShardWriter(job.out / rel, fmt=job.format, image_dtype=job.image_dtype, overwrite=True,
                     capacity=count) as writer:
        for j in range(count):
            i = start + j
            sid = producer.sample_id(i)
            image, label, extras = producer.make(i)
            label = np.asarray(label)
            if label.dtype != np.uint8:
                label = label.astype(np.uint8)
            counts = class_pixels(label, job.class_names, sid)
            hashes = writer.add(image, label, in_range=in_range)
            records.append({"id": sid, "shard": k, "index": j, **extras, "sha256": hashes, "class_pixels": counts})
            if progress is not None:
                progress(1)
        result = writer.close()
    entry = {"path": rel, "start": start, "count": count, "sha256": result.sha256, "bytes": result.bytes}
    # the records as samples.jsonl's lines: finalize joins the sidecars without decoding them again
    sidecar = {"shard": entry, "records_jsonl": jsonl_text(records), **producer.extra_shard_info()}
    atomic_write_text(shard_sidecar(job.out, k), dumps(sidecar, indent=None) + "\n")
    placement = [placement_digest(r["synthesis"]) for r in records if "synthesis" in r]
    return {"k": k, "count": count, "bytes": result.bytes, "placement": placement}
