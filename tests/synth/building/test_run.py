"""`synth build` / `pack` / `merge` end to end on the demo source (and one real-data build)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared import open_dataset
from synthkit import SMALL, fail, ok, same_dataset, synth
from waitkit import finished_shards, held_build, wait_until

PROJECT = Path(__file__).resolve().parents[3]
@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "ds"
    ok("build", *SMALL, "--workers", "1", "--out", out)
    return out


def test_build_reads_back(single: Path):
    ds = open_dataset(single)
    assert len(ds) == 40 and ds.num_shards == 5 and ds.kind == "synthesized"
    assert ds.class_names == ("background", "tumour") and ds.task == "single"
    info = ds.info
    for key in ("schema_version", "tool_version", "config", "seed", "source", "fingerprint", "exemplars",
                "background_pool", "shards", "num_samples"):
        assert key in info
    assert info["config"]["synthesis"]["single"]["object"]["scale"]  # full config recorded
    assert len(info["exemplars"]) == 12 and info["background_pool"]
    assert info["fingerprint"]["arrays"]  # generated source: hashes of the arrays
    records = [json.loads(line) for line in (single / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"s{i:06d}" for i in range(40)]
    for i in (0, 17, 39):
        s = ds[i]
        assert s["image"].dtype == np.float32 and 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["label"].dtype == np.uint8 and s["label"].max() < len(ds.class_names)  # labels in the class set
        assert sum(records[i]["class_pixels"].values()) == s["label"].size
        assert records[i]["class_pixels"]["tumour"] == int((s["label"] == 1).sum())
        syn = records[i]["synthesis"]
        assert syn["seed"] == [3, i] and syn["objects"] and syn["background"]["ref"]
    ds.close()  # a reader holds DIR/.lock (shared) while open; the last one out removes it
    assert not (single / ".build").exists() and not (single / ".lock").exists()
    validate_manifests(single)


def validate_manifests(ds: Path) -> None:
    """dataset.json and every samples.jsonl record match the JSON Schemas in data_manifests/."""
    pytest.importorskip("jsonschema")
    from shared.manifest import validate

    validate(json.loads((ds / "dataset.json").read_text()), "dataset")
    for line in (ds / "samples.jsonl").read_text().splitlines():
        validate(json.loads(line), "sample")


@pytest.mark.parametrize("workers, caller_threads", [(2, None), (1, 1), (1, 3), (2, 1), (2, 3)])
def test_bytes_do_not_depend_on_workers_or_the_callers_opencv_threads(single: Path, tmp_path: Path, workers: int,
                                                                      caller_threads: int | None):
    """The same bytes whatever --workers and whatever OpenCV thread count the caller had set: the
    build runs OpenCV on one thread (synth/base/parallel.py), because OpenCV's multi-threaded kernels
    may differ from its one-thread ones in the last bit on some CPUs (warpAffine on float32, seen
    on an AMD EPYC). `single` was built with OpenCV's default thread count. The caller's setting
    is restored afterwards."""
    before = cv2.getNumThreads()
    try:
        if caller_threads is not None:
            cv2.setNumThreads(caller_threads)
        setting = cv2.getNumThreads()
        ok("build", *SMALL, "--workers", str(workers), "--out", tmp_path / "ds")
        assert cv2.getNumThreads() == setting
    finally:
        cv2.setNumThreads(before)
    same_dataset(single, tmp_path / "ds")


def test_parts_merge_equal_single(single: Path, tmp_path: Path):
    for i in range(3):
        ok("build", *SMALL, "--workers", "1", "--part", f"{i}/3", "--out", tmp_path / f"p{i}")
    text = fail("verify", tmp_path / "p0")
    assert "part 0/3" in text and "synth merge" in text
    text = fail("merge", tmp_path / "p0", tmp_path / "p2", "--out", tmp_path / "bad")
    assert "missing" in text
    ok("merge", tmp_path / "p2", tmp_path / "p0", tmp_path / "p1", "--out", tmp_path / "merged")
    same_dataset(single, tmp_path / "merged")
    # a part from a different build is refused
    other = [a if a != "3" else "4" for a in SMALL]
    ok("build", *other, "--workers", "1", "--part", "1/3", "--out", tmp_path / "q1")
    text = fail("merge", tmp_path / "p0", tmp_path / "q1", tmp_path / "p2", "--out", tmp_path / "bad2")
    assert "different configuration" in text and "seed" in text
    text = fail("build", *SMALL, "--part", "7/9", "--out", tmp_path / "p7")
    assert "only 5 shard" in text


def test_resume_after_kill(single: Path, tmp_path: Path):
    out = tmp_path / "killed"
    # held after its first 3 of 5 shards (tests/waitkit.py): killed there on any machine, never finished
    proc = held_build(["build", *SMALL, "--workers", "1", "--out", out], 3, cwd=PROJECT,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: finished_shards(out) >= 3, proc, "three finished shards")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert finished_shards(out) == 3
    assert not (out / "dataset.json").exists() and (out / ".lock").exists()
    text = fail("build", *SMALL, "--out", out)  # without --resume: refused
    assert "--resume" in text
    text = fail("build", *[a if a != "3" else "5" for a in SMALL], "--resume", "--out", out)
    assert "different configuration" in text and "seed" in text
    assert "stale lock" in text  # the killed build's lock is taken over
    # damage one finished shard: resume must rebuild it, keep the others
    first = sorted((out / "shards").glob("shard-*.zarr"))[0]
    (first / "zarr.json").write_text((first / "zarr.json").read_text() + " ")
    text = ok("build", *SMALL, "--workers", "2", "--resume", "--out", out)
    assert "keeping" in text and "rebuilding 1" in text
    same_dataset(single, out)
    text = ok("build", *SMALL, "--resume", "--out", out)
    assert "already complete" in text


def test_output_safety(single: Path, tmp_path: Path):
    text = fail("build", *SMALL, "--out", single)
    assert "already exists" in text and "--overwrite" in text
    out = tmp_path / "ow"
    ok("build", *SMALL, "--out", out)
    ok("build", *SMALL, "--overwrite", "--out", out)
    (out / "notes.txt").write_text("mine")
    text = fail("build", *SMALL, "--overwrite", "--out", out)
    assert "notes.txt" in text and (out / "notes.txt").exists()
    # unwritable output: a path below a regular file (root ignores chmod, this fails for everyone)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    text = fail("build", *SMALL, "--out", blocker / "sub")
    assert "afile" in text
    text = fail("build", *SMALL, "--out", blocker)
    assert "not a folder" in text
    # a concurrent build (holding the flock of DIR/.lock) is refused
    from shared.locks import FolderLock

    busy = tmp_path / "busy"
    busy.mkdir()
    with FolderLock(busy, shared=False) as other:
        other.write_owner()
        text = fail("build", *SMALL, "--out", busy)
    assert "another build" in text


def test_bad_inputs(tmp_path: Path):
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps({"exemplars": [{"volume": "brain_01", "slice": 20}, {"volume": "nope", "slice": 3}]}))
    base = ["--dataset", "demo-brain", "--num-samples", "8", "--no-progress"]
    text = fail("build", *base, "--exemplar-list", lst, "--out", tmp_path / "a")
    assert "list.json" in text and "nope" in text
    lst.write_text(json.dumps({"exemplars": [{"volume": "brain_01", "slice": 999}]}))
    text = fail("build", *base, "--exemplar-list", lst, "--out", tmp_path / "a")
    assert "999" in text and "out of range" in text
    text = fail("build", *base, "--split", "all", "--exemplars", "5", "--exclude-exemplar", "brain_00:0",
                "--out", tmp_path / "a")
    assert "brain_00:0" in text and "not in the exemplar list" in text
    text = fail("build", *base, "--exemplars", "5", "--exemplar-list", lst, "--out", tmp_path / "a")
    assert "exactly one" in text
    text = fail("build", *base, "--exemplars", "lots", "--out", tmp_path / "a")
    assert "lots" in text
    text = fail("build", *base, "--exemplars", "5", "--part", "3/2", "--out", tmp_path / "a")
    assert "--part" in text
    assert not (tmp_path / "a" / "dataset.json").exists()


def test_exclude_exemplar_and_list(single: Path, tmp_path: Path):
    info = json.loads((single / "dataset.json").read_text())
    ex = info["exemplars"][0]
    ref = f"{ex['volume']}:{ex['slice']}"
    ok("build", *SMALL, "--exclude-exemplar", ref, "--out", tmp_path / "ex")
    ds = open_dataset(tmp_path / "ex")
    assert len(ds.info["exemplars"]) == 11 and ref in ds.info["config"]["exclude_exemplars"]
    code, text = synth("trace", tmp_path / "ex", "--exemplar", ref)
    assert code != 0 and "excluded" in text
    # the same exemplars from a list file give the same dataset as selecting them here
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps({"exemplars": info["exemplars"], "background_pool": info["background_pool"]}))
    args = [a for a in SMALL if a not in ("--exemplars", "12")]
    ok("build", *args, "--exemplar-list", lst, "--out", tmp_path / "fromlist")
    a = [json.loads(x)["sha256"] for x in (single / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x)["sha256"] for x in (tmp_path / "fromlist" / "samples.jsonl").read_text().splitlines()]
    assert a == b


def test_no_synthesis_all_slices_pack_hdf5(tmp_path: Path):
    from shared.sources import open_source
    from shared.splits import resolve_split

    ok("build", "--dataset", "demo-abdomen", "--split", "all", "--exemplars", "3", "--no-synthesis",
       "--format", "hdf5", "--no-progress", "--out", tmp_path / "ex")
    ds = open_dataset(tmp_path / "ex")
    assert ds.kind == "exemplars" and len(ds) == 3 and ds.format == "hdf5"
    assert [ds[i]["id"] for i in range(3)] == ["e0000", "e0001", "e0002"]
    src = open_source("demo-abdomen")
    e = ds.info["exemplars"][1]
    vol = src.load(e["volume"])
    np.testing.assert_array_equal(ds[1]["label"], vol.label[e["slice"]])
    np.testing.assert_allclose(ds[1]["image"], vol.image[e["slice"]], atol=1e-3)  # float16

    ok("pack", "--dataset", "demo-abdomen", "--no-progress", "--shard-size", "20", "--out", tmp_path / "pk")
    ds = open_dataset(tmp_path / "pk")
    cases = resolve_split(src, "test")
    assert ds.kind == "volumes" and [v["id"] for v in ds.volumes] == cases
    for v in ds.volumes:
        vol = src.load(v["id"])
        img, lbl = ds.volume_arrays(v["id"])
        np.testing.assert_array_equal(img, vol.image)  # float32: exact
        np.testing.assert_array_equal(lbl, vol.label)
        assert v["spacing"] == list(vol.spacing) and v["shape"] == list(vol.image.shape)
        assert np.allclose(v["affine"], vol.affine) and v["slices"] == list(range(vol.num_slices))
    assert ds[0]["id"] == f"{cases[0]}:0"
    ok("verify", tmp_path / "pk", "--replay", "3", "--no-progress")
    validate_manifests(tmp_path / "pk")
    validate_manifests(tmp_path / "ex")

    ok("build", "--dataset", "demo-brain", "--split", "test", "--all-slices", "--no-progress", "--out",
       tmp_path / "all")
    ds = open_dataset(tmp_path / "all")
    brain = open_source("demo-brain")
    assert ds.kind == "all-slices" and len(ds) == sum(brain.num_slices(c) for c in resolve_split(brain, "test"))


@pytest.mark.shared_data
def test_real_brats_build(brats_root: Path, tmp_path: Path):
    out = tmp_path / "brats"
    text = ok("build", "--dataset", "brats", "--root", brats_root, "--split", "all", "--exemplars", "150",
              "--num-samples", "300", "--no-progress", "--out", out)
    assert "300 samples" in text and "samples/s" in text and "MB written" in text
    ds = open_dataset(out)
    assert len(ds) == 300 and len(ds.info["exemplars"]) == 150
    assert set(ds.info["fingerprint"]["files"]) >= {f"HGG/{c}/{c}_seg.nii.gz" for c in
                                                    {e["volume"] for e in ds.info["exemplars"]}}
    s = ds[5]
    assert s["image"].shape == (240, 240) and s["label"].max() == 1
    text = ok("verify", out, "--replay", "5", "--no-progress")
    assert "5 replayed bit-identical" in text


def test_pool_sampling_bounded_and_worker_independent(single: Path, tmp_path: Path):
    """A --pool-size below the eligible slices: a seeded sample, chosen from the labels, identical for
    any worker count; the same sample as `synth select --pool-size`; replays bit-identically."""
    from synth.selection.background_pool import pool_key

    base = [a for a in SMALL]
    ok("build", *base, "--pool-size", "7", "--workers", "1", "--out", tmp_path / "p1")
    ok("build", *base, "--pool-size", "7", "--workers", "2", "--out", tmp_path / "p2")
    same_dataset(tmp_path / "p1", tmp_path / "p2")
    info = json.loads((tmp_path / "p1" / "dataset.json").read_text())
    full = json.loads((single / "dataset.json").read_text())
    pool = [(e["volume"], e["slice"]) for e in info["background_pool"]]
    eligible = [(e["volume"], e["slice"]) for e in full["background_pool"]]
    assert len(pool) == 7 and pool == sorted(pool) and set(pool) <= set(eligible)
    seed = info["seed"]
    assert pool == sorted(sorted(eligible, key=lambda r: (pool_key(seed, *r), *r))[:7])
    rule = info["exemplar_list"]["selection"]["background_rule"]
    assert rule["pool_size"] == 7 and rule["eligible"] == len(eligible) and rule["sampled"]
    assert info["exemplar_list"]["background_storage"]["slices"] == 7
    assert info["exemplars"] == full["exemplars"]  # exemplar choice does not depend on the pool
    assert "3 replayed bit-identical" in ok("verify", tmp_path / "p1", "--replay", "3", "--no-progress")


def test_synthesis_config_override(tmp_path: Path):
    cfg = tmp_path / "syn.json"
    cfg.write_text(json.dumps({"single": {"object": {"scale": [1.0, 1.0], "rotation": [0.0, 0.0]}}}))
    args = [a if a != "40" else "8" for a in SMALL]
    ok("build", *args, "--synthesis-config", cfg, "--out", tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["config"]["synthesis"]["single"]["object"]["scale"] == [1.0, 1.0]
    assert info["config"]["synthesis"]["single"]["background"]["rotation"]  # defaults kept, in full
    for line in (tmp_path / "ds" / "samples.jsonl").read_text().splitlines():
        params = json.loads(line)["synthesis"]["objects"][0]["params"]
        assert params["scale"] == 1.0 and params["rotation"] == 0.0
    ok("verify", tmp_path / "ds", "--replay", "8", "--no-progress")
    cfg.write_text(json.dumps({"single": {"object": {"scael": [1.0, 1.0]}}}))
    text = fail("build", *args, "--synthesis-config", cfg, "--out", tmp_path / "bad")
    assert "syn.json" in text and "scael" in text


@pytest.mark.shared_data
def test_real_synapse_build(synapse_root: Path, tmp_path: Path):
    """1 exemplar, organs in every slice (fallback background pool, read in a second pass)."""
    out = tmp_path / "syn"
    ok("build", "--dataset", "synapse", "--root", synapse_root, "--split", "all", "--exemplars", "1",
       "--num-samples", "64", "--shard-size", "32", "--no-progress", "--out", out)
    ds = open_dataset(out)
    assert len(ds) == 64 and ds.task == "multi" and len(ds.class_names) == 9
    assert all(ds[i]["label"].max() < 9 for i in range(0, 64, 9))
    assert "5 replayed bit-identical" in ok("verify", out, "--replay", "5", "--no-progress")
