"""Remote shard folders (shared/shards/remote.py): `train fit` / `train eval` from a dataset served over
HTTP by a real `python -m http.server` on 127.0.0.1, the sha256 check of downloaded shards, and
the bounded cache."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp", reason="fsspec's http filesystem needs aiohttp (the `remote` extra)")

from evalkit import make_tiny_run, pack_volumes, run_train  # noqa: E402
from shared import open_dataset  # noqa: E402
from shared.errors import ConfigError, DataError  # noqa: E402
from shared.shards.remote import CACHE_ENV, CACHE_LIMIT_ENV, as_location, is_remote, parse_size  # noqa: E402
from shared.sources import open_source  # noqa: E402
from train_datasets import make_dataset  # noqa: E402
from waitkit import HANG  # noqa: E402

FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "4", "--threads", "1", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, served folder, request log) of an http.server on loopback serving a folder with
    a Zarr dataset `ds`, an HDF5 one `h5`, a copy of `ds` with one corrupted shard `bad`, and
    packed demo test volumes `packed`."""
    root = tmp_path_factory.mktemp("www")
    make_dataset(root / "ds", n=24, shard_size=5)
    make_dataset(root / "h5", n=12, shard_size=5, fmt="hdf5")
    shutil.copytree(root / "ds", root / "bad")
    chunk = root / "bad" / "shards" / "shard-00002.zarr" / "image" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF   # one flipped byte in the middle of the shard file
    chunk.write_bytes(bytes(data))
    pack_volumes(root / "packed", "demo-brain", None, "test")
    port = _free_port()
    log = open(root.parent / "http.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG  # waits for the server to answer; the bound is for a hang only
        while True:
            try:
                urllib.request.urlopen(f"{url}/ds/dataset.json", timeout=HANG).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"http.server did not start: {(root.parent / 'http.log').read_text()}")
                time.sleep(0.1)
        yield url, root, root.parent / "http.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _shard_gets(log: Path, dataset: str) -> int:
    return sum(f"GET /{dataset}/shards/" in line for line in log.read_text().splitlines())


def test_locations():
    assert is_remote("https://h/ds") and is_remote("s3://b/ds") and not is_remote("/data/ds")
    assert not is_remote("file:///data/ds") and as_location("file:///data/ds") == Path("/data/ds")
    assert as_location("http://h:8000/a/ds/") == "http://h:8000/a/ds"   # no folding of '//'
    assert parse_size("20GB") == 20 * 10**9 and parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ConfigError, match=CACHE_LIMIT_ENV):
        parse_size("lots")


def test_fit_from_http_caches_each_shard_once(served, tmp_path, monkeypatch, capsys):
    url, root, log = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    before = _shard_gets(log, "ds")
    code, out, err = run_train(["fit", "--shards", f"{url}/ds", "--steps", "7", "--num-workers", "2",
                                "--out", tmp_path / "run", *FAST], capsys)
    assert code == 0, err
    assert f"dataset {url}/ds: 24 samples in 5 shards" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 7 and np.isfinite(summary["final_loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["path"] == f"{url}/ds"
    # 7 steps x 4 = 28 samples > 24: every shard was read, each file of each shard downloaded once
    files = sum(1 for p in (root / "ds" / "shards").rglob("*") if p.is_file())
    assert _shard_gets(log, "ds") - before == files
    assert len(list((tmp_path / "cache" / "shards").iterdir())) == 5
    # the same run from the local folder gives the same losses (same bytes, same order)
    code, _, err = run_train(["fit", "--shards", root / "ds", "--steps", "7", "--num-workers", "0",
                              "--out", tmp_path / "local", *FAST], capsys)
    assert code == 0, err
    assert [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == \
           [json.loads(l)["loss"] for l in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
    # a second run and a resume reuse the cache: no shard is downloaded again
    before = _shard_gets(log, "ds")
    code, _, err = run_train(["fit", "--shards", f"{url}/ds", "--steps", "9", "--resume", "--num-workers", "0",
                              "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 0, err
    assert _shard_gets(log, "ds") == before


def test_corrupted_remote_shard_is_caught_by_its_hash(served, tmp_path, monkeypatch, capsys):
    url, _, _ = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    for workers in ("0", "2"):
        code, _, err = run_train(["fit", "--shards", f"{url}/bad", "--steps", "7", "--num-workers", workers,
                                  "--out", tmp_path / f"run{workers}", *FAST], capsys)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {url}/bad/shards/shard-00002.zarr: sha256 mismatch")
        assert "Traceback" not in err
    cached = tmp_path / "cache" / "shards"
    assert not any(p.name.startswith(".") for p in cached.iterdir())   # no temporary left behind
    bad_sha = json.loads((served[1] / "bad" / "dataset.json").read_text())["shards"][2]["sha256"]
    assert not (cached / bad_sha).exists()                               # nothing kept for it


def test_bounded_cache_evicts_least_recently_used(served, tmp_path, monkeypatch):
    url, root, _ = served
    local = open_dataset(root / "ds")
    one = max(s["bytes"] for s in local.shards)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CACHE_LIMIT_ENV, str(int(2.5 * one)))
    ds = open_dataset(f"{url}/ds")
    for k in range(ds.num_shards):
        for a, b in zip(ds.shard_arrays(k), local.shard_arrays(k)):
            np.testing.assert_array_equal(a, b)
        assert ds.cache.cached_bytes() <= 2.5 * one
    kept = {p.name for p in (tmp_path / "cache" / "shards").iterdir()}
    assert kept == {s["sha256"] for s in local.shards[-2:]}             # the two most recent
    assert ds[0]["id"] == "s0000" and ds[23]["id"] == "s0023"           # evicted shards come back


def test_hdf5_and_packed_volumes_over_http(served, tmp_path, monkeypatch, capsys):
    url, root, _ = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    remote, local = open_dataset(f"{url}/h5"), open_dataset(root / "h5")
    assert [remote[i]["id"] for i in range(12)] == [local[i]["id"] for i in range(12)]
    np.testing.assert_array_equal(remote[11]["image"], local[11]["image"])
    run = make_tiny_run(tmp_path / "tiny", open_source("demo-brain"))
    a, b = tmp_path / "ev_remote", tmp_path / "ev_local"
    for shards, out in ((f"{url}/packed", a), (root / "packed", b)):
        code, _, err = run_train(["eval", "--run", run, "--shards", shards, "--out", out, "--num-threads", "1"],
                                 capsys)
        assert code == 0, err
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["dataset"]["path"] == f"{url}/packed"
    assert (sa["mean_dsc"], sa["per_class"], sa["slices"]) == (sb["mean_dsc"], sb["per_class"], sb["slices"])


def test_missing_remote_dataset_and_missing_extra(served, tmp_path, monkeypatch):
    url, _, _ = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(DataError, match=rf"^{url}/nothing/dataset.json: not found$"):
        open_dataset(f"{url}/nothing")
    # s3fs not installed: the message names the extra (nothing is contacted)
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"s3://bucket/ds: reading s3:// needs fsspec and s3fs"):
            open_dataset("s3://bucket/ds")
