"""synth/building/outdir.py: the output folder's lock, its safety checks and the resume state."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.errors import DataError
from shared.hashing import sha256_path
from shared.locks import LOCK_FILE, FolderLock
from synth.building.outdir import (STATE_DIR, BuildLock, check_finished_shards, check_out_outside_source, clear_output,
                          make_output_dir, remove_temporaries, shard_sidecar)


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    messages: list[str] = []
    with BuildLock(tmp_path, log=messages.append) as lock:
        assert lock.held and (tmp_path / LOCK_FILE).exists()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(DataError, match=f"another build \\(pid {os.getpid()} on "):
            BuildLock(tmp_path, log=messages.append).acquire()  # a second open file: flock refuses it
    assert not (tmp_path / LOCK_FILE).exists()  # the last holder removes the file
    assert messages == []
    with BuildLock(tmp_path):  # free again
        pass


def test_lock_refused_while_a_reader_holds_the_folder(tmp_path: Path) -> None:
    reader = FolderLock(tmp_path, shared=True).acquire()
    try:
        with pytest.raises(DataError, match="the dataset is being read"):
            BuildLock(tmp_path).acquire()
    finally:
        reader.release()
    BuildLock(tmp_path).acquire().release()


def test_stale_lock_of_a_dead_build_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2 ** 22 + 17, "host": "node7"}))  # no flock held
    messages: list[str] = []
    with BuildLock(tmp_path, log=messages.append):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(messages) == 1 and f"process {2 ** 22 + 17} on node7" in messages[0] and "stale lock" in messages[0]


def test_clear_output_removes_only_dataset_entries(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    make_output_dir(out)
    make_output_dir(out)  # an existing folder is fine
    clear_output(out, overwrite=False, resume=False)  # empty: nothing to refuse
    (out / "dataset.json").write_text("{}")
    (out / "shards").mkdir()
    (out / "shards" / "shard-00000.h5").write_bytes(b"x")
    (out / STATE_DIR).mkdir()
    with pytest.raises(DataError, match="already exists and is not empty"):
        clear_output(out, overwrite=False, resume=False)
    clear_output(out, overwrite=False, resume=True)  # --resume keeps everything
    assert (out / "dataset.json").exists()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"--overwrite refused.*notes\.txt"):
        clear_output(out, overwrite=True, resume=False)
    (out / "notes.txt").unlink()
    clear_output(out, overwrite=True, resume=False)
    assert sorted(p.name for p in out.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="exists and is not a folder"):
        make_output_dir(tmp_path / "file")


def test_output_inside_the_source_is_refused(tmp_path: Path) -> None:
    source = {"name": "brats", "root": str(tmp_path / "data")}
    with pytest.raises(DataError, match="inside the source folder"):
        check_out_outside_source(tmp_path / "data" / "ds", source)
    with pytest.raises(DataError, match="inside the source folder"):
        check_out_outside_source(tmp_path / "data", source)
    check_out_outside_source(tmp_path / "ds", source)
    check_out_outside_source(tmp_path / "ds", {"name": "demo-brain", "root": None})


def test_resume_keeps_only_shards_whose_hash_checks(tmp_path: Path) -> None:
    out = tmp_path
    (out / "shards").mkdir()
    (out / STATE_DIR).mkdir()
    plan = [(0, 4), (4, 4), (8, 2)]
    for k, (start, count) in enumerate(plan):
        shard = out / "shards" / f"shard-{k:05d}.h5"
        shard.write_bytes(bytes([k]) * 100)
        entry = {"path": f"shards/{shard.name}", "start": start, "count": count, "sha256": sha256_path(shard)}
        shard_sidecar(out, k).write_text(json.dumps({"shard": entry, "records": []}))
    (out / "shards" / "shard-00001.h5").write_bytes(b"changed after its sidecar")
    (out / "shards" / ".shard-00003.h5.tmp-123").write_bytes(b"half written")
    messages: list[str] = []
    kept = check_finished_shards(out, range(3), plan, "hdf5", messages.append)
    assert kept == [0, 2]
    assert not shard_sidecar(out, 1).exists()  # its sidecar is dropped: the shard is rebuilt
    assert messages == ["resume: keeping 2 finished shard(s), rebuilding 1 whose hash did not check (1)"]
    # a plan that no longer matches a sidecar drops that shard too
    assert check_finished_shards(out, range(3), [(0, 4), (4, 4), (8, 3)], "hdf5", messages.append) == [0]
    remove_temporaries(out)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.h5", "shard-00001.h5",
                                                                  "shard-00002.h5"]
