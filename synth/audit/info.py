"""Auditing a finished dataset: summaries, tracing, placement figures (``synth info`` / ``trace``).

- :func:`dataset_summary` counts samples, class frequencies, shard sizes and exemplar use.
- :func:`trace_exemplar` lists every sample derived from one exemplar slice.
- :func:`placement_summary` / :func:`floating_from_pixels`: the placement figures and the ring test.

Re-hashing and replay (``synth verify``) are in :mod:`synth.audit.verify`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError
from shared.fileio import read_json
from shared.manifest import read_samples
from shared.shards import DATASET_FILE, ShardDataset, open_dataset


def ref_of(d: dict[str, Any]) -> tuple[str, int]:
    """``{"volume": v, "slice": k}`` -> (v, k)."""
    return str(d["volume"]), int(d["slice"])


def record_refs(rec: dict[str, Any]) -> list[tuple[str, int]]:
    """Every source slice a sample was made from (exemplars, background, or the packed slice)."""
    if "synthesis" in rec:
        syn = rec["synthesis"]
        refs = [ref_of(o["ref"]) for o in syn.get("objects", [])]
        if syn.get("exemplar"):
            refs.append(ref_of(syn["exemplar"]))
        refs.append(ref_of(syn["background"]["ref"]))
        return refs
    if "source" in rec:
        return [ref_of(rec["source"])]
    return []


def exemplar_refs(rec: dict[str, Any]) -> list[tuple[str, int]]:
    """The exemplar slices a sample copies from (not its background)."""
    if "synthesis" in rec:
        syn = rec["synthesis"]
        refs = {ref_of(o["ref"]) for o in syn.get("objects", [])}
        if syn.get("exemplar"):
            refs.add(ref_of(syn["exemplar"]))
        return sorted(refs)
    if "source" in rec:
        return [ref_of(rec["source"])]
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
            if "synthesis" in rec and ref_of(rec["synthesis"]["background"]["ref"]) == ref:
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
            bg_use[ref_of(rec["synthesis"]["background"]["ref"])] += 1
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


def placement_digest(synthesis: dict[str, Any]) -> dict[str, Any]:
    """The part of a sample's synthesis record that :func:`placement_summary` reads (each object's
    ``inside``, ``placement``, ``check``): build workers send these, so the end-of-build report
    need not parse samples.jsonl again (~0.3 s for 4500 samples)."""
    out: dict[str, Any] = {"objects": [{"inside": o["inside"]} if "inside" in o else {}
                                       for o in synthesis.get("objects", [])]}
    for key in ("placement", "check"):
        if key in synthesis:
            out[key] = synthesis[key]
    return out


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
    from synth.synthesis.pixel_checks import floating_objects

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


def build_summary_lines(root: str | Path, placement: list[dict[str, Any]] | None = None) -> list[str]:
    """What `synth build` prints at the end of a synthesized build: the exemplars chosen of how
    many eligible, the background pool and its slice range, placement fallbacks, floating objects
    (the ring test computed at build time) and the commands to look at the data. ``placement``:
    every sample's :func:`placement_digest` in sample order, when the build has them (else the
    records are read from samples.jsonl)."""
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
    records = read_samples(root) if placement is None else [{"synthesis": p} for p in placement]
    task = info.get("task", "single")
    synth_cfg = (cfg.get("synthesis") or {}).get(task) or {}
    lines.append(f"recipe: {cfg.get('recipe', 'extended')}")
    lines += placement_lines(placement_summary(records, (synth_cfg.get("placement") or {}).get("min_inside")), None)
    sheet = root.parent / f"{root.name}_sheet.png"  # beside the dataset: DIR holds only dataset files
    lines.append(f"next: synth sheet {root} --out {sheet}   (open the PNG: objects on the body?)")
    lines.append(f"      synth info {root}   (counts, placement, the ring test on the stored pixels)")
    return lines
