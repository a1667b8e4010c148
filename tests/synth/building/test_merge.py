"""synth/building/merge.py: parts built with --part join into the very bytes of a whole build."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import DataError
from synth.building.run import run_job
from synth.building.spec import BuildConfig, Part
from synth.building.jobs import prepare_exemplar_job
from synth.building.merge import merge_parts, read_parts

QUIET = {"progress": False, "log": lambda message: None}


def _build(out: Path, part: Part | None = None, seed: int = 3) -> Path:
    cfg = BuildConfig(kind="synthesized", dataset="demo-brain", split="test", exemplars="4", num_samples=20,
                      shard_size=6, seed=seed)
    job = prepare_exemplar_job(cfg, out, workers=1, progress=False, log=QUIET["log"])
    run_job(job, workers=1, part=part, **QUIET)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    return {"whole": _build(root / "whole"), "p0": _build(root / "p0", Part(0, 2)),
            "p1": _build(root / "p1", Part(1, 2)), "other": _build(root / "other", Part(1, 2), seed=4)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_parts_merge_into_the_whole_build(built: dict[str, Path], tmp_path: Path) -> None:
    p0 = json.loads((built["p0"] / "dataset.json").read_text())
    assert p0["part"] == {"index": 0, "count": 2, "start": 0, "stop": 12, "total": 20, "shards": [0, 2]}
    summary = merge_parts([built["p1"], built["p0"]], tmp_path / "merged", log=QUIET["log"])  # any order
    assert (summary.num_samples, summary.built) == (20, 20)
    assert summary.bytes_written == sum(s["bytes"] for s in json.loads((built["whole"] / "dataset.json")
                                                                        .read_text())["shards"])
    assert _files(tmp_path / "merged") == _files(built["whole"])
    p1 = json.loads((built["p1"] / "dataset.json").read_text())
    assert [s["path"] for s in p1["shards"]] == ["shards/shard-00002.zarr", "shards/shard-00003.zarr"]


def test_read_parts_refuses_gaps_overlaps_and_foreign_parts(built: dict[str, Path], tmp_path: Path) -> None:
    assert [p for p, _ in read_parts([built["p1"], built["p0"]])] == [built["p0"], built["p1"]]
    with pytest.raises(DataError, match=r"samples \[12, 20\) are missing"):
        read_parts([built["p0"]])
    with pytest.raises(DataError, match=r"samples \[0, 12\) are missing"):
        read_parts([built["p1"]])
    with pytest.raises(DataError, match="overlap another part"):
        read_parts([built["p0"], built["p1"], built["p1"]])
    with pytest.raises(DataError, match=r"built with a different configuration .*differs in: .*seed"):
        read_parts([built["p0"], built["other"]])
    with pytest.raises(DataError, match="not a part of a dataset"):
        read_parts([built["whole"]])
    broken = tmp_path / "p1"
    shutil.copytree(built["p1"], broken)
    shard = next(p for p in sorted((broken / "shards").rglob("*")) if p.is_file() and p.name != "zarr.json")
    shard.write_bytes(shard.read_bytes()[::-1])
    with pytest.raises(DataError, match="sha256 does not match"):
        read_parts([built["p0"], broken])
