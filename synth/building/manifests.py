"""A build's manifests: dataset.json's fields and the final write of dataset.json + samples.jsonl.

The finished shards' sidecars (:func:`synth.building.outdir.shard_sidecar`) are joined into
``samples.jsonl`` and ``dataset.json`` by :func:`finalize`; ``shared.manifest.write_dataset``
writes them atomically, dataset.json last (its presence marks the dataset complete).
"""
from __future__ import annotations

from typing import Any

from shared.errors import DataError
from shared.fileio import read_json
from shared.manifest import SCHEMA_VERSION, jsonl_text, tool_version, write_dataset
from synth.building.spec import PATH_KEYS, Job, Part, part_info
from synth.building.outdir import shard_sidecar


def finalize(job: Job, plan, shards: range, part: Part | None, key: str) -> None:
    """Join the sidecars of ``shards`` into samples.jsonl and dataset.json of ``job.out``."""
    out = job.out
    entries, lines, geometry = [], [], {}
    for k in shards:
        sidecar = read_json(shard_sidecar(out, k))
        entries.append(sidecar["shard"])
        if "records_jsonl" in sidecar:
            lines.append(sidecar["records_jsonl"])
        else:  # a sidecar written before 2026-11-26 (a build resumed across the change)
            lines.append(jsonl_text(sidecar["records"]))
        geometry.update(sidecar.get("geometry") or {})
    info = dataset_info(job, entries, key, part=part_info(part, plan, shards), geometry=geometry)
    write_dataset(out, info, "".join(lines))


def dataset_info(job: Job, shards: list[dict[str, Any]], key: str, *, part: dict[str, Any] | None,
                 geometry: dict[str, Any]) -> dict[str, Any]:
    """dataset.json's fields for ``job`` (``shards``: the shard entries; ``part``: see
    :func:`synth.building.spec.part_info`; ``geometry``: per volume, for kind ``volumes``)."""
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


def identity_of(info: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of a finished (part) dataset.json, paths left out (for merge messages)."""
    config = {k: v for k, v in (info.get("config") or {}).items() if k not in PATH_KEYS}
    return {"config": config, "fingerprint": info.get("fingerprint"), "exemplars": info.get("exemplars"),
            "background_pool": info.get("background_pool"), "kind": info.get("kind")}
