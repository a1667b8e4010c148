"""``synth verify``: re-hash a finished dataset against its manifests, and replay samples.

:func:`verify_dataset` re-hashes every shard and every sample against dataset.json and
samples.jsonl (shards spread over worker processes, :mod:`synth.base.parallel`) and, with
``replay=K``, regenerates K random samples from their records (re-reading the source named in
dataset.json, the bank assembled by :func:`synth.synthesis.bank.make_bank`) and checks they are
bit-identical to what is stored.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from shared.errors import DataError
from shared.hashing import sha256_array, sha256_path
from shared.manifest import read_samples
from shared.shards import ShardDataset, open_dataset, to_stored
from synth.audit.info import ref_of, record_refs
from synth.base.parallel import Worker, map_tasks, opencv_single_threaded


@dataclass
class VerifyReport:
    root: Path
    num_samples: int = 0
    num_shards: int = 0
    bad_shards: list[str] = field(default_factory=list)  # shard paths whose sha256 differs
    bad_samples: dict[str, str] = field(default_factory=dict)  # id -> problem
    replayed: list[str] = field(default_factory=list)
    replay_mismatches: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # manifest-level problems

    @property
    def ok(self) -> bool:
        return not (self.bad_shards or self.bad_samples or self.replay_mismatches or self.problems)

    def lines(self) -> list[str]:
        out = [f"{p}" for p in self.problems]
        out += [f"shard {p}: sha256 differs from dataset.json" for p in self.bad_shards]
        out += [f"sample {sid}: {why}" for sid, why in self.bad_samples.items()]
        out += [f"replay {sid}: {why}" for sid, why in self.replay_mismatches.items()]
        return out

    def summary(self) -> str:
        if self.ok:
            rep = f", {len(self.replayed)} replayed bit-identical" if self.replayed else ""
            shards = f"{self.num_shards} shard{'s' if self.num_shards != 1 else ''}"
            return f"OK: {self.num_samples} samples in {shards} match the manifest{rep} ({self.root})"
        ids = list(self.bad_samples) + [i for i in self.replay_mismatches if i not in self.bad_samples]
        head = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        return (f"FAILED: {len(self.bad_shards)} shard(s), {len(self.bad_samples)} sample(s) and "
                f"{len(self.replay_mismatches)} replay(s) do not match ({self.root})"
                + (f"; samples: {head}" if ids else "") + (f"; {len(self.problems)} manifest problem(s)" if self.problems else ""))


def _check_records(ds: ShardDataset, records: list[dict[str, Any]], report: VerifyReport) -> None:
    if len(records) != len(ds):
        report.problems.append(f"samples.jsonl has {len(records)} records, dataset.json says {len(ds)} samples")
        return
    ids = Counter(r.get("id") for r in records)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        report.problems.append(f"samples.jsonl: duplicate ids {', '.join(map(str, dup[:5]))}")
    for k in range(ds.num_shards):
        start, count = ds.shard_range(k)
        for j in range(count):
            r = records[start + j]
            if r.get("shard") != k or r.get("index") != j:
                report.problems.append(f"samples.jsonl: record {start + j} ({r.get('id')}) says shard "
                                       f"{r.get('shard')} index {r.get('index')}, expected shard {k} index {j}")
                return


def verify_dataset(root: str | Path, *, replay: int = 0, seed: int = 0, source_root: str | Path | None = None,
                   workers: int = 1, progress: bool = True) -> VerifyReport:
    """Re-hash every shard and sample of ``root`` (shards spread over ``workers`` processes);
    replay ``replay`` random samples."""
    from tqdm import tqdm

    root = Path(root)
    ds = open_dataset(root, check_files=False)
    records = read_samples(root)
    report = VerifyReport(root, num_samples=len(ds), num_shards=ds.num_shards)
    _check_records(ds, records, report)
    if report.problems:
        return report
    bar = tqdm(total=len(ds), desc="verifying", unit="sample", disable=not progress)
    try:
        for bad_shard, bad, count in map_tasks(_verify_shard, range(ds.num_shards), workers=workers,
                                               state=(ds, records), spawn_state=partial(_open_for_verify, str(root))):
            _collect(report, bad_shard, bad)
            bar.update(count)
    finally:
        bar.close()
    if replay > 0:
        _replay(ds, records, replay, seed, source_root, workers, progress, report)
    ds.close()
    return report


def _open_for_verify(root: str) -> tuple[ShardDataset, list[dict[str, Any]]]:
    """The state of a spawned verify worker: the dataset opened again there."""
    return open_dataset(root, check_files=False), read_samples(root)


def _collect(report: VerifyReport, bad_shard: str | None, bad: dict[str, str]) -> None:
    if bad_shard:
        report.bad_shards.append(bad_shard)
    report.bad_samples.update(bad)


def _verify_shard(worker: Worker, k: int) -> tuple[str | None, dict[str, str], int]:
    """(shard path if its sha256 differs, {sample id: problem}, samples) for shard k (the
    worker's state: the dataset and its records)."""
    ds, records = worker.state
    entry = ds.shards[k]
    path = ds.shard_path(k)
    start, count = ds.shard_range(k)
    classes = len(ds.class_names)
    part = VerifyReport(ds.root)
    if not path.exists():
        return entry["path"], {records[start + j]["id"]: f"shard {entry['path']} is missing" for j in range(count)}, count
    bad_shard = entry["path"] if sha256_path(path) != entry.get("sha256") else None
    try:
        image, label, size = ds.shard_arrays(k)
        samples = ((j, image[j], label[j], size[j]) for j in range(count))
        _check_samples(samples, records, start, ds.image_dtype, classes, part)
    except DataError:
        # a chunk does not decode (checksum): find which samples, one by one
        for j in range(count):
            try:
                im, lb, sz = ds.handle(k).read(j)
            except DataError as exc:
                part.bad_samples[records[start + j]["id"]] = f"unreadable ({exc})"
                continue
            _check_samples([(j, im, lb, sz)], records, start, ds.image_dtype, classes, part)
    return bad_shard, part.bad_samples, count


def _check_samples(samples: Iterable, records, start: int, dtype: str, num_classes: int, report: VerifyReport) -> None:
    for j, im, lb, sz in samples:
        rec = records[start + j]
        h, w = int(sz[0]), int(sz[1])
        im = np.asarray(im)[:h, :w]
        lb = np.asarray(lb)[:h, :w]
        problems = []
        if str(im.dtype) != dtype:
            problems.append(f"image stored as {im.dtype}, dataset.json says {dtype}")
        if sha256_array(im) != rec["sha256"]["image"]:
            problems.append("image sha256 differs")
        if sha256_array(lb) != rec["sha256"]["label"]:
            problems.append("label sha256 differs")
        if lb.size and int(lb.max()) >= num_classes:
            problems.append(f"label value {int(lb.max())} outside the class set")
        if problems:
            report.bad_samples[rec["id"]] = "; ".join(problems)


def _replay(ds: ShardDataset, records: list[dict[str, Any]], k: int, seed: int, source_root, workers: int,
            progress: bool, report: VerifyReport) -> None:
    """Regenerate ``k`` random samples (chosen by ``seed``) and compare them with the stored ones."""
    from synth.building.jobs import check_fingerprint, load_slices, reopen_source

    rng = np.random.default_rng(seed)
    n = len(records)
    chosen = [records[i] for i in sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))]
    info = ds.info
    source = reopen_source(info, source_root)
    refs: set[tuple[str, int]] = set()
    for rec in chosen:
        refs |= set(record_refs(rec))
    check_fingerprint(source, info.get("fingerprint") or {}, sorted({v for v, _ in refs}), str(ds.root / "dataset.json"))
    slices = load_slices(source, sorted(refs), workers, progress)
    if ds.kind == "synthesized":
        from synth.synthesis.sample import replay
        from synth.synthesis.config import SynthesisConfig

        config = SynthesisConfig.from_json(info["config"]["synthesis"], str(ds.root / "dataset.json"))
        bank = replay_bank(chosen, slices, ds.class_names)

        def regenerate(rec):
            return replay(rec["synthesis"], bank, config)
    else:
        def regenerate(rec):
            src = rec["source"]
            return slices[(src["volume"], int(src["slice"]))]
    with opencv_single_threaded():  # as the build made them: OpenCV's threads may change the last bit
        for rec in chosen:
            try:
                image, label = regenerate(rec)
                why = _differences(rec, image, label, ds.image_dtype)
                if why:
                    report.replay_mismatches[rec["id"]] = " and ".join(why) + " from the recorded sample"
            except DataError as exc:
                report.replay_mismatches[rec["id"]] = f"cannot replay ({exc})"
            report.replayed.append(rec["id"])
    if report.replay_mismatches:
        _note_environment(info, report)


def replay_bank(records: list[dict[str, Any]], slices: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
                class_names: tuple[str, ...]):
    """The bank that replays ``records``: their exemplar slices and their background slices (with
    any labelled structure erased, as the build's pool had them), from ``slices`` (image, label)."""
    from synth.synthesis.background import background_image
    from synth.synthesis.bank import make_bank

    ex_refs: set[tuple[str, int]] = set()
    bg_refs: set[tuple[str, int]] = set()
    for rec in records:
        syn = rec["synthesis"]
        bg_refs.add(ref_of(syn["background"]["ref"]))
        ex_refs |= {ref_of(o["ref"]) for o in syn.get("objects", [])}
        if syn.get("exemplar"):
            ex_refs.add(ref_of(syn["exemplar"]))
    return make_bank({ref: slices[ref] for ref in sorted(ex_refs)},
                     {ref: background_image(*slices[ref]) for ref in sorted(bg_refs)}, tuple(class_names))


def _differences(rec: dict[str, Any], image: np.ndarray, label: np.ndarray, dtype: str) -> list[str]:
    stored = to_stored(np.asarray(image), dtype)
    label = np.asarray(label).astype(np.uint8, copy=False)
    why = []
    if sha256_array(stored) != rec["sha256"]["image"]:
        why.append("image differs")
    if sha256_array(label) != rec["sha256"]["label"]:
        why.append("label differs")
    return why


def _note_environment(info: dict[str, Any], report: VerifyReport) -> None:
    from synth.building.manifests import environment

    now, then = environment(), info.get("environment") or {}
    changed = [f"{k} {then.get(k)} -> {now.get(k)}" for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
    if changed:
        report.problems.append("note: the replay ran with other library versions than the build "
                               f"({', '.join(changed)}); resampling code may differ")
