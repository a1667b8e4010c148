"""Shard datasets on a web server or object storage, read through fsspec with a bounded local cache.

``open_dataset("https://host/ds")`` (or ``s3://bucket/ds``, ``gs://bucket/ds``, any fsspec URL)
works like a local folder, the way MosaicML Streaming reads remote shards:

* ``dataset.json`` is read from the URL at every open (it is small, and it names the shards and
  their sha256); ``samples.jsonl`` is downloaded again only when ``dataset.json`` changed.
* A shard is downloaded the first time it is read, into a content-addressed cache
  (``CACHE/shards/<sha256>/shard-00000.zarr``), its sha256 checked against ``dataset.json``
  before it is used: a corrupt or changed remote shard is a one-line :class:`DataError` and
  nothing is kept. Later reads, later runs and other datasets holding the same shard reuse it.
* The cache is bounded: after each download the least recently used shards are removed until
  the shards fit in the limit (the shard just fetched is kept). Training reads a shard into memory
  in one go, so a shard evicted afterwards costs nothing; one that is read again is downloaded
  again. (A limit far below what the running workers read at once can evict a shard in the
  milliseconds between another process finding it and reading it: that read stops with a
  one-line error, never with wrong data. Keep the limit at several shards.)
* Several processes (DataLoader workers, torchrun ranks) share one cache: a file lock per shard
  makes one of them download it while the others wait, and downloads go to a temporary folder
  renamed when verified.

Zarr shards are folders; their files are found from the metadata (the group's arrays ``image``,
``label``, ``size`` and each array's chunk grid), not from a directory listing, so any static web
server works. A chunk the server does not have is one zarr did not store (all fill value), as on
disk.

Settings, read in every process (so DataLoader workers and torchrun ranks agree):
``EXEMPLAR_SAM_CACHE`` (cache folder; default ``$XDG_CACHE_HOME/exemplar-sam/remote``, i.e.
``~/.cache/exemplar-sam/remote``) and ``EXEMPLAR_SAM_CACHE_LIMIT`` (bytes, or with a unit:
``500MB``, ``20GB``; default 20GB).

Needs ``fsspec`` plus the protocol's package: ``aiohttp`` for http(s), ``s3fs`` for s3,
``gcsfs`` for gs (``pip install "exemplar-sam[remote]"``). Credentials come from those packages'
usual places (AWS / Google environment variables and config files).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from shared.errors import ConfigError, DataError, exception_summary
from shared.fileio import atomic_write_bytes
from shared.hashing import path_bytes, sha256_path
from shared.shards.formats import ShardHandle
from shared.shards.layout import DATASET_FILE, SAMPLES_FILE, SHARD_ARRAYS, read_dataset_info
from shared.shards.reader import ShardDataset

CACHE_ENV = "EXEMPLAR_SAM_CACHE"
CACHE_LIMIT_ENV = "EXEMPLAR_SAM_CACHE_LIMIT"
DEFAULT_CACHE_LIMIT = 20 * 10**9

# The optional package each protocol needs (fsspec's own ImportError names it less clearly).
_PROTOCOL_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs",
                      "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL with a scheme other than ``file`` (``https://...``, ``s3://...``)."""
    text = os.fspath(location)
    return isinstance(text, str) and bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text)) \
        and not text.lower().startswith("file://")


def as_location(value: str | os.PathLike) -> str | Path:
    """A dataset location as given on the command line: URLs stay strings (``Path`` would fold
    their ``//``), local paths become ``Path`` (``file://`` stripped)."""
    text = os.fspath(value)
    if is_remote(text):
        return text.rstrip("/")
    if isinstance(text, str) and text.lower().startswith("file://"):
        text = text[len("file://"):]
    return Path(text)


def parse_size(text: str, source: str = CACHE_LIMIT_ENV) -> int:
    """``"20GB"``, ``"512MiB"``, ``"1e9"`` -> bytes (ConfigError otherwise)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    try:
        value = float(m.group(1)) if m else math.nan
    except ValueError:
        value = math.nan
    if not m or unit not in _UNITS or not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{source}={text!r}: expected a positive size such as 500MB or 20GB")
    return int(value * _UNITS[unit])


@dataclass(frozen=True)
class CacheSettings:
    """Where remote shards are kept and how many bytes of them at most."""

    directory: Path
    limit_bytes: int

    @classmethod
    def from_env(cls) -> "CacheSettings":
        directory = os.environ.get(CACHE_ENV)
        if not directory:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            directory = os.path.join(base, "exemplar-sam", "remote")
        limit = os.environ.get(CACHE_LIMIT_ENV)
        return cls(Path(directory), parse_size(limit) if limit else DEFAULT_CACHE_LIMIT)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class RemoteFolder:
    """Files under one URL, read through fsspec (the filesystem made per process: fork-safe)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._fs: Any = None
        self._root = ""
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "_fs": None, "_root": "", "_pid": None}

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._pid != os.getpid():
            protocol = self.url.split("://", 1)[0].lower()
            try:
                import fsspec.core

                self._fs, self._root = fsspec.core.url_to_fs(self.url)
            except ImportError as exc:
                package = _PROTOCOL_PACKAGES.get(protocol, "the fsspec implementation of this protocol")
                raise ConfigError(f"{self.url}: reading {protocol}:// needs fsspec and {package} "
                                  f"(pip install \"exemplar-sam[remote]\"; {exception_summary(exc)})") from None
            except ValueError as exc:   # fsspec: "Protocol not known"
                raise ConfigError(f"{self.url}: no fsspec filesystem for {protocol}:// ({exception_summary(exc)})") from None
            self._root = self._root.rstrip("/")
            self._pid = os.getpid()
        return self._fs, self._root

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; DataError naming the URL when it is missing or unreadable."""
        fs, root = self._filesystem()
        try:
            return fs.cat_file(f"{root}/{rel}")
        except FileNotFoundError:
            raise DataError(f"{self.where(rel)}: not found") from None
        except Exception as exc:  # network, permission, server errors
            raise DataError(f"{self.where(rel)}: cannot read ({exception_summary(exc)})") from None

    def read_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """Several files at once (concurrent for async filesystems); None for a missing one."""
        fs, root = self._filesystem()
        paths = {f"{root}/{rel}": rel for rel in rels}
        try:
            got = fs.cat(list(paths), on_error="return")
        except Exception as exc:
            raise DataError(f"{self.url}: cannot read {len(rels)} files ({exception_summary(exc)})") from None
        out: dict[str, bytes | None] = {}
        for path, rel in paths.items():
            # (some filesystems key the answer by the path without its protocol)
            value = got.get(path, got.get(fs._strip_protocol(path))) if isinstance(got, dict) else None
            if isinstance(value, FileNotFoundError):
                out[rel] = None
            elif isinstance(value, BaseException):
                raise DataError(f"{self.where(rel)}: cannot read ({exception_summary(value)})")
            else:
                out[rel] = value
        return out


def _zarr_shard_files(folder: RemoteFolder, rel: str) -> dict[str, bytes]:
    """Every stored file of Zarr shard group ``rel`` (relative path inside the group -> bytes),
    found from its metadata: the group's ``zarr.json``, then each array's ``zarr.json`` and the
    chunk keys of its regular grid (keys the server lacks are chunks zarr did not store)."""
    files = {"zarr.json": folder.read(f"{rel}/zarr.json")}
    metas = folder.read_many([f"{rel}/{name}/zarr.json" for name in SHARD_ARRAYS])
    chunk_keys: list[str] = []
    for name in SHARD_ARRAYS:
        raw = metas[f"{rel}/{name}/zarr.json"]
        if raw is None:
            raise DataError(f"{folder.where(rel)}/{name}/zarr.json: not found (not a complete shard)")
        files[f"{name}/zarr.json"] = raw
        try:
            meta = json.loads(raw)
            shape = [int(d) for d in meta["shape"]]
            chunks = [int(d) for d in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            encoding = meta.get("chunk_key_encoding") or {"name": "default"}
            sep = (encoding.get("configuration") or {}).get("separator", "/" if encoding["name"] == "default" else ".")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{folder.where(rel)}/{name}/zarr.json: not Zarr v3 array metadata ({exception_summary(exc)})") from None
        if meta.get("chunk_grid", {}).get("name") != "regular" or len(shape) != len(chunks) or min(chunks, default=1) < 1:
            raise DataError(f"{folder.where(rel)}/{name}/zarr.json: unsupported chunk grid")
        grid = [max(1, math.ceil(s / c)) for s, c in zip(shape, chunks)]
        if math.prod(grid) > 100_000:
            raise DataError(f"{folder.where(rel)}/{name}/zarr.json: {math.prod(grid)} chunks, too many to fetch")
        for idx in _grid_indices(grid):
            key = sep.join(str(i) for i in idx)
            chunk_keys.append(f"{name}/c{sep}{key}" if encoding["name"] == "default" else f"{name}/{key}")
    got = folder.read_many([f"{rel}/{key}" for key in chunk_keys])
    for key in chunk_keys:
        data = got[f"{rel}/{key}"]
        if data is not None:
            files[key] = data
    return files


def _grid_indices(grid: list[int]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(g) for g in grid))


class ShardCache:
    """The bounded, content-addressed local copy of remote shards (see the module docstring)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings
        self.root = settings.directory

    def dataset_dir(self, url: str) -> Path:
        return self.root / "datasets" / hashlib.sha256(url.encode()).hexdigest()[:24]

    def shard_dir(self, sha256: str) -> Path:
        return self.root / "shards" / sha256

    def _lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def fetch(self, folder: RemoteFolder, entry: dict[str, Any]) -> Path:
        """Local path of the shard described by a dataset.json ``shards`` entry, downloading and
        verifying it if needed."""
        rel = str(entry["path"])
        expected = str(entry.get("sha256") or "")
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise DataError(f"{folder.where('dataset.json')}: shard {rel} has no sha256, a remote shard cannot be verified")
        name = PurePosixPath(rel).name
        final = self.shard_dir(expected) / name
        if final.exists():
            self.touch(final)
            return final
        with _locked(self._lock(expected)):
            if final.exists():     # another process fetched it while this one waited
                self.touch(final)
                return final
            tmp = self.shard_dir(expected).with_name(f".{expected}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                target = tmp / name
                if name.endswith(".zarr"):
                    for sub, data in _zarr_shard_files(folder, rel).items():
                        (target / sub).parent.mkdir(parents=True, exist_ok=True)
                        (target / sub).write_bytes(data)
                else:
                    tmp.mkdir(parents=True)
                    target.write_bytes(folder.read(rel))
                got = sha256_path(target)
                if got != expected:
                    raise DataError(f"{folder.where(rel)}: sha256 mismatch, the remote shard is corrupt or changed "
                                    f"since dataset.json was written (expected {expected[:12]}..., got {got[:12]}...)")
                final.parent.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final.parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.evict(keep=final.parent)
        return final

    @staticmethod
    def touch(path: Path) -> None:
        """Mark a cached shard as just used (its folder's mtime orders the eviction)."""
        with contextlib.suppress(OSError):
            os.utime(path.parent)

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used shards until the cached shards fit in the limit."""
        shards = self.root / "shards"
        with _locked(self._lock("evict")):
            entries = []
            for d in shards.iterdir() if shards.is_dir() else ():
                if d.name.startswith("."):
                    continue
                try:
                    entries.append((d.stat().st_mtime, path_bytes(d), d))
                except OSError:
                    continue
            total = sum(e[1] for e in entries)
            for _mtime, nbytes, d in sorted(entries, key=lambda e: e[0]):
                if total <= self.settings.limit_bytes:
                    break
                if keep is not None and d == keep:
                    continue
                shutil.rmtree(d, ignore_errors=True)
                total -= nbytes

    def cached_bytes(self) -> int:
        shards = self.root / "shards"
        return sum(path_bytes(d) for d in shards.iterdir() if not d.name.startswith(".")) if shards.is_dir() else 0

    def manifests(self, folder: RemoteFolder) -> tuple[Path, dict[str, Any]]:
        """Local folder holding the dataset's current dataset.json and samples.jsonl, and the
        parsed dataset.json (checked like a local one)."""
        local = self.dataset_dir(folder.url)
        raw = folder.read(DATASET_FILE)
        with _locked(self._lock(local.name)):
            local.mkdir(parents=True, exist_ok=True)
            current = local / DATASET_FILE
            fresh = current.exists() and current.read_bytes() == raw and (local / SAMPLES_FILE).exists()
            if not fresh:
                atomic_write_bytes(local / SAMPLES_FILE, folder.read(SAMPLES_FILE))
                (local / "url.txt").write_text(folder.url + "\n")
                atomic_write_bytes(current, raw)   # last: a complete folder for this dataset.json
        try:
            info = read_dataset_info(local)
        except DataError as exc:   # name the URL, not the cache path
            raise DataError(str(exc).replace(str(local), folder.url)) from None
        return local, info


class RemoteShardDataset(ShardDataset):
    """A :class:`~shared.shards.ShardDataset` whose shards are fetched into the local cache on first
    use (picklable: DataLoader workers re-create the fsspec filesystem in their process)."""

    def __init__(self, url: str, cache: ShardCache):
        self.url = url
        self.folder = RemoteFolder(url)
        self.cache = cache
        local, info = cache.manifests(self.folder)
        super().__init__(local, info)

    def shard_path(self, k: int) -> Path:
        return self.cache.fetch(self.folder, self._shards[k])

    def handle(self, k: int) -> ShardHandle:
        handle = self._handles.get(k)
        if handle is not None:
            if handle.path.exists() and handle.pid == os.getpid():
                self.cache.touch(handle.path)
            else:   # evicted (by any process) since it was opened: fetch it again
                self._handles.pop(k, None)
        return super().handle(k)

    def __repr__(self) -> str:
        return f"Remote{super().__repr__()[:-1]}, url={self.url!r})"


def open_remote_dataset(url: str) -> RemoteShardDataset:
    """The dataset at ``url`` with the cache of :meth:`CacheSettings.from_env` (module docstring)."""
    return RemoteShardDataset(url.rstrip("/"), ShardCache(CacheSettings.from_env()))
