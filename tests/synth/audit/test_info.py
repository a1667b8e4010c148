"""`synth verify` / `info` / `trace` on small demo datasets, including corrupted ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from synthkit import SMALL, fail, ok


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit")
    ok("build", *SMALL, "--workers", "1", "--out", root / "zarr")
    ok("build", *SMALL, "--workers", "1", "--format", "hdf5", "--out", root / "hdf5")
    return {"zarr": root / "zarr", "hdf5": root / "hdf5"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _records(ds: Path) -> list[dict]:
    return [json.loads(x) for x in (ds / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_verify_ok_and_replay(built, fmt):
    text = ok("verify", built[fmt], "--replay", "40", "--no-progress")
    assert "OK: 40 samples in 5 shards" in text and "40 replayed bit-identical" in text


def test_verify_replays_with_opencv_on_one_thread(built, monkeypatch):
    """Replay renders as the build did, with OpenCV on one thread whatever the caller had set
    (OpenCV's threads may change the last bit on some CPUs, which would read as a mismatch), and
    gives the caller's setting back."""
    import cv2

    import synth.synthesis.sample

    real, seen = synth.synthesis.sample.replay, []

    def replay(*args, **kwargs):
        seen.append(cv2.getNumThreads())
        return real(*args, **kwargs)

    monkeypatch.setattr(synth.synthesis.sample, "replay", replay)
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        text = ok("verify", built["zarr"], "--replay", "4", "--no-progress")
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
    assert "4 replayed bit-identical" in text and seen == [1] * 4


def test_verify_catches_corrupted_zarr_chunk(built, tmp_path: Path):
    ds = _copy(built["zarr"], tmp_path / "c")
    # shard 1 holds samples 8..15; the image array is one Zarr shard file of 8 chunks (one per
    # sample) followed by its index: overwrite bytes inside the first chunk
    f = ds / "shards" / "shard-00001.zarr" / "image" / "c" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[100:200] = bytes(100)
    f.write_bytes(bytes(data))
    text = fail("verify", ds, "--no-progress")
    assert "FAILED" in text and "s000008" in text and "shard-00001.zarr" in text
    assert "s000009" not in text.split("FAILED")[1]  # only the damaged sample is named


def test_verify_catches_corrupted_hdf5_chunk(built, tmp_path: Path):
    import h5py

    ds = _copy(built["hdf5"], tmp_path / "h")
    path = ds / "shards" / "shard-00002.h5"
    with h5py.File(path, "r") as h:
        offset = h["label"].id.get_chunk_info(3).byte_offset  # sample 16 + 3
    data = bytearray(path.read_bytes())
    data[offset + 4: offset + 40] = b"\x07" * 36
    path.write_bytes(bytes(data))
    text = fail("verify", ds, "--no-progress")
    assert "s000019" in text and "FAILED" in text


def test_verify_catches_manifest_tampering(built, tmp_path: Path):
    ds = _copy(built["zarr"], tmp_path / "m")
    recs = _records(ds)
    recs[5]["sha256"]["label"] = "0" * 64
    recs[7]["synthesis"]["objects"][0]["params"]["rotation"] += 7.0  # replay renders something else
    (ds / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = fail("verify", ds, "--replay", "40", "--no-progress")
    assert "sample s000005: label sha256 differs" in text
    assert "replay s000007" in text
    # a missing shard
    shutil.rmtree(ds / "shards" / "shard-00004.zarr")
    text = fail("verify", ds, "--no-progress")
    assert "shard-00004.zarr" in text and "s000032" in text


def test_verify_refuses_changed_source(built, tmp_path: Path):
    ds = _copy(built["zarr"], tmp_path / "f")
    info = json.loads((ds / "dataset.json").read_text())
    case = sorted(info["fingerprint"]["arrays"])[0]
    info["fingerprint"]["arrays"][case] = "0" * 64
    (ds / "dataset.json").write_text(json.dumps(info))
    text = fail("verify", ds, "--replay", "40", "--no-progress")
    assert f"source volume {case} changed" in text


def test_info(built):
    text = ok("info", built["zarr"])
    assert "synthesized dataset of 40 samples" in text and "5 x zarr" in text
    assert "tumour" in text and "exemplars: 12 slices" in text
    data = json.loads(ok("info", built["hdf5"], "--json"))
    assert data["num_samples"] == 40 and data["classes"]["tumour"]["fraction_of_samples"] > 0.9
    assert data["exemplars"]["count"] == 12 and len(data["shards"]) == 5


def test_trace(built):
    recs = _records(built["zarr"])
    ref = recs[0]["synthesis"]["objects"][0]["ref"]
    text = ok("trace", built["zarr"], "--exemplar", f"{ref['volume']}:{ref['slice']}")
    ids = [line for line in text.splitlines() if line.startswith("s0")]
    expected = [r["id"] for r in recs
                if any(o["ref"] == ref for o in r["synthesis"]["objects"]) or r["synthesis"]["exemplar"] == ref]
    assert ids == expected and "s000000" in ids and "--exclude-exemplar" in text
    rec = json.loads(ok("trace", built["zarr"], "--sample", "s000003", "--json").splitlines()[0])
    assert rec["id"] == "s000003" and rec["synthesis"]["seed"] == [3, 3]
    bg = recs[2]["synthesis"]["background"]["ref"]
    assert "s000002" in ok("trace", built["zarr"], "--background", f"{bg['volume']}:{bg['slice']}")
    assert "not an exemplar" in fail("trace", built["zarr"], "--exemplar", "brain_02:0")
    assert "no sample with id" in fail("trace", built["zarr"], "--sample", "s999999")
    assert "CASE:SLICE" in fail("trace", built["zarr"], "--exemplar", "brain_02")
    assert "exactly one" in fail("trace", built["zarr"])


def test_the_build_report_from_memory_equals_the_one_from_samples_jsonl(tmp_path: Path):
    """`synth build` reports placement from the digests its workers send (no second parse of
    samples.jsonl); the lines equal those computed from the written records."""
    from synth.audit.info import build_summary_lines

    out = tmp_path / "ds"
    text = ok("build", *SMALL, "--workers", "2", "--out", out)
    from_disk = build_summary_lines(out)
    assert any(line.startswith("placement:") for line in from_disk)
    for line in from_disk:
        assert line in text.splitlines()
