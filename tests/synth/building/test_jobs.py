"""synth/building/jobs.py (a build request -> a Job with its bank) and synth/building/run.py's shard workers, directly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.hashing import sha256_path
from shared.sources import open_source
from synth.synthesis.bank import SliceRef
from synth.building.run import ShardJob, build_shard, run_job
from synth.building.spec import BuildConfig, plan_shards
from synth.selection.exemplar_list import select_exemplars
from synth.building.jobs import parse_slice_ref, prepare_exemplar_job
from synth.building.outdir import STATE_DIR, shard_sidecar
from synth.building.producers import PreloadedSlices, SynthesisProducer

QUIET = {"progress": False, "log": lambda message: None}
BASE = {"dataset": "demo-brain", "split": "test", "num_samples": 20, "shard_size": 6, "seed": 3}


def _job(out: Path, workers: int = 1, **over):
    cfg = BuildConfig(**{"kind": "synthesized", "exemplars": "4", **BASE, **over})
    return prepare_exemplar_job(cfg, out, workers=workers, progress=False, log=QUIET["log"])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_selected_job_holds_its_exemplars_and_pool_in_the_bank(tmp_path: Path) -> None:
    job = _job(tmp_path / "ds")
    assert isinstance(job.producer, SynthesisProducer) and job.num_samples == 20 and job.task == "single"
    bank = job.producer.bank
    assert len(job.exemplars) == 4
    assert bank.exemplar_refs == [SliceRef(e["volume"], e["slice"]) for e in job.exemplars]
    assert bank.background_refs == [SliceRef(e["volume"], e["slice"]) for e in job.background_pool]
    assert job.exemplar_list_meta["background_storage"]["slices"] == len(job.background_pool) > 0
    assert job.config.synthesis["version"] == 1  # the resolved synthesis config is recorded
    source = open_source("demo-brain", None)
    for e in job.exemplars:  # the bank holds the source's very slices
        vol = source.load(e["volume"])
        image, label = bank.exemplar(SliceRef(e["volume"], e["slice"]))
        assert np.array_equal(image, vol.image[e["slice"]]) and np.array_equal(label, vol.label[e["slice"]])
    info = bank.background_info[bank.background_refs[0]]
    assert info.slice == bank.background_refs[0].slice and 0.05 <= info.content <= 1.0


def test_listed_and_selected_exemplars_give_the_same_samples(tmp_path: Path) -> None:
    """--exemplar-list FILE (read with read_cases) and --exemplars N (streaming scan) assemble the
    bank on two paths: the same list gives the same bank, hence the same samples."""
    source = open_source("demo-brain", None)
    listing = select_exemplars(source, ["brain_02", "brain_06"], "4", 3, 10, split="test",
                               pool_size=4096)
    path = listing.to_json(tmp_path / "list.json")
    selected = _job(tmp_path / "a")
    listed = _job(tmp_path / "b", exemplars=None, exemplar_list=str(path), workers=2)
    assert listed.exemplars == selected.exemplars and listed.background_pool == selected.background_pool
    assert listed.fingerprint == selected.fingerprint
    for i in (0, 7, 19):
        a, b = selected.producer.make(i), listed.producer.make(i)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]


def test_no_synthesis_job_packs_the_exemplar_slices(tmp_path: Path) -> None:
    job = _job(tmp_path / "ds", kind="exemplars", num_samples=None)
    assert isinstance(job.producer, PreloadedSlices) and job.num_samples == 4
    assert [job.producer.sample_id(i) for i in range(4)] == ["e0000", "e0001", "e0002", "e0003"]
    image, label, extras = job.producer.make(2)
    e = job.exemplars[2]
    assert extras == {"kind": "exemplars", "source": {"volume": e["volume"], "slice": e["slice"]}}
    assert np.array_equal(image, open_source("demo-brain", None).load(e["volume"]).image[e["slice"]])


def test_excluded_exemplars_leave_the_job(tmp_path: Path) -> None:
    first = _job(tmp_path / "a").exemplars[0]
    ref = f"{first['volume']}:{first['slice']}"
    job = _job(tmp_path / "b", exclude_exemplars=[ref])
    assert len(job.exemplars) == 3 and (first["volume"], first["slice"]) not in \
        {(e["volume"], e["slice"]) for e in job.exemplars}
    with pytest.raises(ConfigError, match="not in the exemplar list"):
        _job(tmp_path / "c", exclude_exemplars=["brain_02:999"])
    assert parse_slice_ref("Brats18_2013_3_1:77") == ("Brats18_2013_3_1", 77)
    with pytest.raises(ConfigError, match="expected CASE:SLICE"):
        parse_slice_ref("Brats18_2013_3_1")


def test_build_shard_writes_the_shard_and_its_sidecar(tmp_path: Path) -> None:
    job = _job(tmp_path)
    plan = plan_shards(job.num_samples, job.config.shard_size)
    assert plan == [(0, 6), (6, 6), (12, 6), (18, 2)]
    (tmp_path / "shards").mkdir()
    (tmp_path / STATE_DIR).mkdir()
    ticks: list[int] = []
    result = build_shard(ShardJob.of(job, plan), 3, progress=ticks.append)
    assert result["k"] == 3 and result["count"] == 2 and ticks == [1, 1]
    sidecar = json.loads(shard_sidecar(tmp_path, 3).read_text())
    entry = sidecar["shard"]
    assert entry["path"] == "shards/shard-00003.zarr" and (entry["start"], entry["count"]) == (18, 2)
    assert entry["sha256"] == sha256_path(tmp_path / entry["path"]) and entry["bytes"] == result["bytes"]
    records = [json.loads(line) for line in sidecar["records_jsonl"].splitlines()]
    assert [r["id"] for r in records] == ["s000018", "s000019"]
    assert [(r["shard"], r["index"]) for r in records] == [(3, 0), (3, 1)]
    _, label, _ = job.producer.make(19)
    pixels = records[1]["class_pixels"]
    assert pixels == {"background": int((label == 0).sum()), "tumour": int((label == 1).sum())}


def test_one_and_two_workers_write_the_same_dataset(tmp_path: Path) -> None:
    for workers in (1, 2):
        summary = run_job(_job(tmp_path / f"w{workers}"), workers=workers, **QUIET)
        assert (summary.num_samples, summary.built, summary.kept_shards) == (20, 20, 0)
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    assert not (tmp_path / "w1" / STATE_DIR).exists()  # the resume state goes once the build is done
