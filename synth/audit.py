"""Auditing a finished dataset: re-hash (verify), replay from provenance, summaries, tracing.

- :func:`verify_dataset` re-hashes every shard and every sample against the manifests and, with
  ``replay=K``, regenerates K random samples from their records (re-reading the source named in
  dataset.json) and checks they are bit-identical to what is stored.
- :func:`dataset_summary` counts samples, class frequencies, shard sizes and exemplar use.
- :func:`trace_exemplar` lists every sample derived from one exemplar slice.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from shared.errors import DataError
from shared.hashing import sha256_array, sha256_path
from shared.manifest import read_samples
from shared.shards import ShardDataset, open_dataset, to_stored


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
    _VERIFY.update(ds=ds, records=records)
    try:
        workers = max(1, min(workers, ds.num_shards))
        if workers == 1:
            results = map(_verify_shard, range(ds.num_shards))
            for bad_shard, bad, count in results:
                _collect(report, bad_shard, bad)
                bar.update(count)
        else:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            init = None if method == "fork" else (str(root),)
            with mp.get_context(method).Pool(workers, initializer=_verify_init, initargs=(init,)) as pool:
                for bad_shard, bad, count in pool.imap(_verify_shard, range(ds.num_shards)):
                    _collect(report, bad_shard, bad)
                    bar.update(count)
    finally:
        bar.close()
        _VERIFY.clear()
    if replay > 0:
        _replay(ds, records, replay, seed, source_root, workers, progress, report)
    ds.close()
    return report


_VERIFY: dict[str, Any] = {}  # the dataset and records being verified (inherited by forked workers)


def _verify_init(args: tuple | None) -> None:
    if args is not None:  # spawn: reopen here
        _VERIFY.update(ds=open_dataset(args[0], check_files=False), records=read_samples(args[0]))


def _collect(report: VerifyReport, bad_shard: str | None, bad: dict[str, str]) -> None:
    if bad_shard:
        report.bad_shards.append(bad_shard)
    report.bad_samples.update(bad)


def _verify_shard(k: int) -> tuple[str | None, dict[str, str], int]:
    """(shard path if its sha256 differs, {sample id: problem}, samples) for shard k."""
    ds: ShardDataset = _VERIFY["ds"]
    records = _VERIFY["records"]
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
                im, lb, sz = ds._handle(k).read(j)
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
    from synth.jobs import check_fingerprint, load_slices, reopen_source

    rng = np.random.default_rng(seed)
    n = len(records)
    chosen = sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))
    info = ds.info
    source = reopen_source(info, source_root)
    refs: set[tuple[str, int]] = set()
    for i in chosen:
        refs |= set(record_refs(records[i]))
    cases = sorted({v for v, _ in refs})
    check_fingerprint(source, info.get("fingerprint") or {}, cases, str(ds.root / "dataset.json"))
    slices = load_slices(source, sorted(refs), workers, progress)
    dtype = ds.image_dtype
    if ds.kind == "synthesized":
        from synth.background import background_image
        from synth.synthesis import SliceBank, SliceRef, SynthesisConfig, replay

        config = SynthesisConfig.from_json(info["config"]["synthesis"], str(ds.root / "dataset.json"))
        ex_refs = set()
        bg_refs = set()
        for i in chosen:
            syn = records[i]["synthesis"]
            bg_refs.add(_ref(syn["background"]["ref"]))
            ex_refs |= {_ref(o["ref"]) for o in syn.get("objects", [])}
            if syn.get("exemplar"):
                ex_refs.add(_ref(syn["exemplar"]))
        bank = SliceBank(exemplars={SliceRef(v, s): slices[(v, s)] for v, s in sorted(ex_refs)},
                         backgrounds={SliceRef(v, s): background_image(*slices[(v, s)]) for v, s in sorted(bg_refs)},
                         class_names=ds.class_names)

        def regenerate(rec):
            return replay(rec["synthesis"], bank, config)
    else:
        def regenerate(rec):
            src = rec["source"]
            return slices[(src["volume"], int(src["slice"]))]
    for i in chosen:
        rec = records[i]
        try:
            image, label = regenerate(rec)
            stored = to_stored(np.asarray(image), dtype)
            label = np.asarray(label).astype(np.uint8, copy=False)
            why = []
            if sha256_array(stored) != rec["sha256"]["image"]:
                why.append("image differs")
            if sha256_array(label) != rec["sha256"]["label"]:
                why.append("label differs")
            if why:
                report.replay_mismatches[rec["id"]] = " and ".join(why) + " from the recorded sample"
        except DataError as exc:
            report.replay_mismatches[rec["id"]] = f"cannot replay ({exc})"
        report.replayed.append(rec["id"])
    if report.replay_mismatches:
        from synth.build import environment

        now, then = environment(), info.get("environment") or {}
        changed = [f"{k} {then.get(k)} -> {now.get(k)}" for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
        if changed:
            report.problems.append("note: the replay ran with other library versions than the build "
                                   f"({', '.join(changed)}); resampling code may differ")


def _ref(d: dict[str, Any]) -> tuple[str, int]:
    return str(d["volume"]), int(d["slice"])


def record_refs(rec: dict[str, Any]) -> list[tuple[str, int]]:
    """Every source slice a sample was made from (exemplars, background, or the packed slice)."""
    if "synthesis" in rec:
        syn = rec["synthesis"]
        refs = [_ref(o["ref"]) for o in syn.get("objects", [])]
        if syn.get("exemplar"):
            refs.append(_ref(syn["exemplar"]))
        refs.append(_ref(syn["background"]["ref"]))
        return refs
    if "source" in rec:
        return [_ref(rec["source"])]
    return []


def exemplar_refs(rec: dict[str, Any]) -> list[tuple[str, int]]:
    """The exemplar slices a sample copies from (not its background)."""
    if "synthesis" in rec:
        syn = rec["synthesis"]
        refs = {_ref(o["ref"]) for o in syn.get("objects", [])}
        if syn.get("exemplar"):
            refs.add(_ref(syn["exemplar"]))
        return sorted(refs)
    if "source" in rec:
        return [_ref(rec["source"])]
    return []


def _records(root: Path, ds: ShardDataset) -> list[dict[str, Any]]:
    """samples.jsonl, checked against dataset.json: a truncated or emptied manifest must not read
    as "0 samples derived" (a false negative in an audit)."""
    records = read_samples(root)
    if len(records) != len(ds):
        raise DataError(f"{root / 'samples.jsonl'}: {len(records)} records, dataset.json says {len(ds)} samples "
                        f"(truncated or edited manifest; rebuild or restore the dataset)")
    return records


def trace_exemplar(root: str | Path, ref: tuple[str, int], *, background: bool = False) -> list[dict[str, Any]]:
    """Records of every sample derived from exemplar ``ref`` (or, with ``background``, pasted onto it)."""
    root = Path(root)
    ds = open_dataset(root, check_files=False)
    info = ds.info
    pool = {(e["volume"], int(e["slice"])) for e in (info.get("background_pool") or [])}
    listed = {(e["volume"], int(e["slice"])) for e in (info.get("exemplars") or [])}
    records = _records(root, ds)
    if ds.kind in ("all-slices", "volumes"):
        listed = {(r["source"]["volume"], int(r["source"]["slice"])) for r in records}
    if background and ref not in pool:
        raise DataError(f"{root}: {ref[0]}:{ref[1]} is not in the background pool of this dataset")
    if not background and ref not in listed:
        excluded = set((info.get("config") or {}).get("exclude_exemplars") or [])
        why = " (it was excluded with --exclude-exemplar)" if f"{ref[0]}:{ref[1]}" in excluded else ""
        raise DataError(f"{root}: {ref[0]}:{ref[1]} is not an exemplar of this dataset{why}")
    out = []
    for rec in records:
        if background:
            if "synthesis" in rec and _ref(rec["synthesis"]["background"]["ref"]) == ref:
                out.append(rec)
        elif ref in exemplar_refs(rec):
            out.append(rec)
    return out


def find_sample(root: str | Path, sample: str) -> dict[str, Any]:
    """One sample's record, by id (s000012) or by its 0-based number in the dataset (12), the
    same two forms `synth show --sample` takes."""
    root = Path(root)
    ds = open_dataset(root, check_files=False)
    records = list(_records(root, ds))
    for rec in records:
        if rec.get("id") == sample:
            return rec
    if sample.isdigit():
        if int(sample) < len(records):
            return records[int(sample)]
        raise DataError(f"{root}: sample number {int(sample)} out of range (dataset has {len(records)} samples)")
    example = records[0].get("id") if records else "none"
    raise DataError(f"{root}: no sample with id {sample!r} (give an id like {example} or a 0-based "
                    f"sample number below {len(records)})")


def dataset_summary(root: str | Path) -> dict[str, Any]:
    """Counts, class frequencies, shard sizes and exemplar summary of a dataset (JSON-able)."""
    root = Path(root)
    ds = open_dataset(root, check_files=False)
    info = ds.info
    records = _records(root, ds)
    names = list(ds.class_names)
    present = Counter()
    pixels = Counter()
    for rec in records:
        for name, c in (rec.get("class_pixels") or {}).items():
            if c:
                present[name] += 1
                pixels[name] += int(c)
    n = max(1, len(records))
    classes = {name: {"fraction_of_samples": present[name] / n,
                      "mean_pixels_when_present": (pixels[name] / present[name]) if present[name] else 0.0}
               for name in names[1:]}
    sizes = [int(s.get("bytes", 0)) for s in info["shards"]]
    use = Counter()
    bg_use = Counter()
    for rec in records:
        for r in exemplar_refs(rec):
            use[r] += 1
        if "synthesis" in rec:
            bg_use[_ref(rec["synthesis"]["background"]["ref"])] += 1
    exemplars = info.get("exemplars") or []
    ex_classes = Counter()
    for e in exemplars:
        for name, c in (e.get("classes") or {}).items():
            ex_classes[name] += 1
    listed = [(e["volume"], int(e["slice"])) for e in exemplars]
    counts = [use[r] for r in listed] if listed else []
    summary = {
        "root": str(root),
        "kind": ds.kind,
        "format": ds.format,
        "image_dtype": ds.image_dtype,
        "task": ds.task,
        "class_names": names,
        "num_samples": len(ds),
        "num_shards": ds.num_shards,
        "total_mb": sum(sizes) / 1e6,
        "shard_mb": {"min": min(sizes) / 1e6, "mean": sum(sizes) / len(sizes) / 1e6, "max": max(sizes) / 1e6},
        "shards": [{"path": s["path"], "start": s["start"], "count": s["count"], "mb": s.get("bytes", 0) / 1e6}
                   for s in info["shards"]],
        "classes": classes,
        "seed": info.get("seed"),
        "source": (info.get("source") or {}).get("name"),
        "source_root": (info.get("source") or {}).get("root"),
        "exemplars": {
            "count": len(exemplars),
            "volumes": len({v for v, _ in listed}),
            "slices_with_class": dict(ex_classes),
            "background_pool": len(info.get("background_pool") or []),
            "backgrounds_used": len(bg_use),
            "excluded": (info.get("config") or {}).get("exclude_exemplars") or [],
            "spec": (info.get("exemplar_list") or {}).get("spec"),
            "samples_per_exemplar": ({"min": min(counts), "mean": sum(counts) / len(counts), "max": max(counts)}
                                     if counts else None),
            "unused": [f"{v}:{k}" for v, k in listed if use[(v, k)] == 0][:20],
        },
    }
    if ds.volumes:
        summary["volumes"] = [{"id": v["id"], "slices": v["count"], "spacing": v.get("spacing")} for v in ds.volumes]
    return summary
