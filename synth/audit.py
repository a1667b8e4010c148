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
    single = ((info.get("config") or {}).get("synthesis") or {}).get(ds.task) or {}
    summary["placement"] = placement_summary(records, (single.get("placement") or {}).get("min_inside", 0.9))
    if ds.volumes:
        summary["volumes"] = [{"id": v["id"], "slices": v["count"], "spacing": v.get("spacing")} for v in ds.volumes]
    return summary


# --------------------------------------------------------------------------------------------
# Placement: the manifest's own figures and the pixel-level ring test (docs/synthesis.md)


def placement_summary(records: list[dict[str, Any]], min_inside: float | None = None) -> dict[str, Any] | None:
    """What the synthesis records say about placement: objects below ``min_inside`` on the body,
    fallbacks taken, tries, and the ring test computed at build time (float32 pixels). None for
    datasets that are not synthesized."""
    synth = [r["synthesis"] for r in records if "synthesis" in r]
    if not synth:
        return None
    objects = [o for r in synth for o in r.get("objects", [])]
    inside = np.array([float(o.get("inside", 1.0)) for o in objects]) if objects else np.zeros(0)
    fallback = Counter(r.get("placement", {}).get("fallback", "unrecorded") for r in synth)
    checked = [r["check"] for r in synth if "check" in r]
    out: dict[str, Any] = {
        "samples": len(synth),
        "objects": len(objects),
        "inside_min": float(inside.min()) if inside.size else None,
        "inside_mean": float(inside.mean()) if inside.size else None,
        "objects_below_min_inside": (int(np.count_nonzero(inside < min_inside - 1e-9))
                                     if min_inside is not None and inside.size else None),
        "min_inside": min_inside,
        "fallbacks": dict(fallback),
        "tries_mean": (float(np.mean([r["placement"]["tries"] for r in synth if "placement" in r]))
                       if any("placement" in r for r in synth) else None),
        "extra_pairs": sum(r.get("placement", {}).get("pairs", 1) - 1 for r in synth),
        "extra_backgrounds": sum(r.get("placement", {}).get("backgrounds", 1) - 1 for r in synth),
        "floating_at_build": (sum(1 for c in checked if c.get("floating")) if checked else None),
    }
    return out


def floating_from_pixels(root: str | Path, *, max_samples: int | None = None) -> dict[str, Any]:
    """The ring test on the stored pixels of every sample (or the first ``max_samples``): share of
    samples with a floating object (more than half of the pixels 2-4 px outside the object are
    air, intensity < 0.04). Works on any dataset, whatever code built it."""
    from synth.anatomy import floating_objects

    ds = open_dataset(Path(root), check_files=False)
    n = n_float = n_obj = 0
    worst: list[tuple[float, str]] = []
    for k in range(ds.num_shards):
        for s in ds.read_shard(k):
            if max_samples is not None and n >= max_samples:
                break
            f, air = floating_objects(s["image"], s["label"], ds.task)
            n += 1
            n_obj += f
            if f:
                n_float += 1
                worst.append((air, s["id"]))
    worst.sort(reverse=True)
    return {"samples": n, "floating_samples": n_float, "floating_objects": n_obj,
            "floating_fraction": n_float / max(1, n), "worst": [w for _, w in worst[:8]]}


def placement_lines(p: dict[str, Any] | None, pixels: dict[str, Any] | None) -> list[str]:
    """The placement figures of a synthesized dataset, as printed by `synth info` and `synth build`."""
    out = []
    if p:
        below = p.get("objects_below_min_inside")
        out.append(f"placement: {p['objects']} objects, on the body (inside) min {p['inside_min']:.2f} / mean "
                   f"{p['inside_mean']:.3f}"
                   + (f"; {below} ({100 * below / max(1, p['objects']):.1f} %) below min_inside {p['min_inside']:g}"
                      if below is not None else ""))
        fb = p.get("fallbacks") or {}
        order = ["drawn", "moved", "redrawn", "shrunk", "background", "pair"]
        if any(fb.get(k) for k in order):
            out.append("placed: " + ", ".join(f"{k} {fb[k]}" for k in order if fb.get(k))
                       + (f"; mean {p['tries_mean']:.1f} positions tested" if p.get("tries_mean") is not None else "")
                       + f"; {p['extra_backgrounds']} extra background(s), {p['extra_pairs']} new pair(s)")
        else:
            out.append("placed: not recorded (built before the anatomy rule)")
        if p.get("floating_at_build") is not None and not pixels:
            n = p["samples"]
            out.append(f"floating objects (ring test at build time): {p['floating_at_build']} of {n} samples "
                       f"({100 * p['floating_at_build'] / max(1, n):.2f} %)")
    if pixels:
        out.append(f"floating objects (ring test on the stored pixels): {pixels['floating_samples']} of "
                   f"{pixels['samples']} samples ({100 * pixels['floating_fraction']:.2f} %)"
                   + (f"; worst: {', '.join(pixels['worst'][:4])}" if pixels["worst"] else ""))
    return out


def build_summary_lines(root: str | Path) -> list[str]:
    """What `synth build` prints at the end of a synthesized build: the exemplars chosen of how
    many eligible, the background pool and its slice range, placement fallbacks, floating objects
    (the ring test computed at build time) and the commands to look at the data."""
    from shared.manifest import read_json
    from shared.shards import DATASET_FILE

    root = Path(root)
    info = read_json(root / DATASET_FILE)
    el = info.get("exemplar_list") or {}
    sel = el.get("selection") or {}
    exemplars = info.get("exemplars") or []
    pool = info.get("background_pool") or []
    cfg = info.get("config") or {}
    lines = []
    eligible = sel.get("eligible_slices")
    lines.append(f"exemplars: {len(exemplars)}" + (f" of {eligible} eligible slices" if eligible else "")
                 + f" from {len({e['volume'] for e in exemplars})} volume(s)"
                 + (f" (spec {el.get('spec')}, rule {el.get('rule')}, seed {el.get('seed')})" if el.get("spec") else ""))
    if pool:
        ks = np.array([int(e["slice"]) for e in pool])
        lines.append(f"background pool: {len(pool)} slices from {len({e['volume'] for e in pool})} volume(s), "
                     f"slice index {ks.min()}-{ks.max()} (quartiles {int(np.percentile(ks, 25))} / "
                     f"{int(np.median(ks))} / {int(np.percentile(ks, 75))})")
    records = read_samples(root)
    task = info.get("task", "single")
    synth_cfg = (cfg.get("synthesis") or {}).get(task) or {}
    lines.append(f"recipe: {cfg.get('recipe', 'extended')}")
    lines += placement_lines(placement_summary(records, (synth_cfg.get("placement") or {}).get("min_inside")), None)
    sheet = root.parent / f"{root.name}_sheet.png"  # beside the dataset: DIR holds only dataset files
    lines.append(f"next: synth sheet {root} --out {sheet}   (open the PNG: objects on the body?)")
    lines.append(f"      synth info {root}   (counts, placement, the ring test on the stored pixels)")
    return lines
