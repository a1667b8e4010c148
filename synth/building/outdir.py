"""A build's output folder: the lock, the safety checks, and the state an interrupted build leaves.

Safety: the folder is locked (``.lock``, flock, see :mod:`shared.locks`; readers hold it shared,
so a rebuild cannot start under a running fit); a folder inside the source tree, a non-empty
folder without ``--overwrite`` and files that are not a dataset's are refused. Resume state:
``.build/state.json`` (the build's identity) and one sidecar ``.build/shard-XXXXX.json`` per
finished shard (its hashes and sample records), so ``--resume`` keeps the shards whose sha256
still checks.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from shared.errors import DataError
from shared.hashing import sha256_path
from shared.locks import LOCK_FILE, FolderLock, LockBusy
from shared.fileio import read_json
from shared.shards import DATASET_FILE, SAMPLES_FILE, SHARDS_DIR, shard_relpath
from synth.building.spec import Log, log_to_stderr

STATE_DIR = ".build"
STATE_FILE = "state.json"
OWNED_ENTRIES = {DATASET_FILE, SAMPLES_FILE, SHARDS_DIR, STATE_DIR}


class BuildLock:
    """Exclusive lock on an output folder (``DIR/.lock``, flock; see :mod:`shared.locks`).

    Refused while another build writes the folder or a reader (``train fit``, ``synth verify``)
    reads it. A build killed with -9 leaves the file but not the flock: the next build simply
    takes it (and says so). Atomic by construction: the kernel hands the flock to one process.
    """

    def __init__(self, folder: Path, log: Log = log_to_stderr):
        self.lock = FolderLock(folder, shared=False)
        self.path = self.lock.path
        self.log = log

    @property
    def held(self) -> bool:
        return self.lock.held

    def acquire(self) -> "BuildLock":
        previous = self.lock.owner()
        try:
            self.lock.acquire()
        except LockBusy:
            other = self.lock.owner()
            if other.get("pid"):
                raise DataError(f"{self.path.parent}: another build (pid {other.get('pid')} on {other.get('host')}) "
                                f"is writing to this folder") from None
            raise DataError(f"{self.path.parent}: the dataset is being read (train fit, train eval, synth verify ...); "
                            f"it cannot be rewritten until the reader ends (or write to another folder)") from None
        except OSError as exc:
            raise DataError(f"{self.path.parent}: output folder is not writable ({exc.strerror})") from exc
        pid, host = previous.get("pid"), previous.get("host")
        if isinstance(pid, int) and pid != os.getpid():  # we hold the flock: that build is gone
            self.log(f"note: taking over the stale lock {self.path} of process {pid} on {host}, "
                     f"which is no longer running (killed?)")
        self.lock.write_owner()
        return self

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> "BuildLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_out_outside_source(out: Path, source: dict[str, Any]) -> None:
    """Refuse an output folder inside the source tree: the source readers scan their root, so a
    dataset written there would break every later command on that source."""
    root = source.get("root")
    if not root:
        return
    root_path, out_path = Path(root).resolve(), Path(out).resolve()
    if out_path == root_path or root_path in out_path.parents:
        raise DataError(f"--out {out}: inside the source folder {root_path}; write the dataset elsewhere "
                        f"(the source must stay as it is)")


def make_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{out}: exists and is not a folder") from None
    except OSError as exc:
        raise DataError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")


def clear_output(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless asked; with --overwrite remove only dataset entries."""
    entries = sorted(e.name for e in out.iterdir() if e.name != LOCK_FILE)
    if not entries or resume:
        return
    if not overwrite:
        raise DataError(f"{out}: already exists and is not empty (use --overwrite to replace it, "
                        f"or --resume to continue an interrupted build)")
    foreign = [e for e in entries if e not in OWNED_ENTRIES]
    if foreign:
        raise DataError(f"{out}: --overwrite refused, the folder holds files that are not part of a dataset "
                        f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
    # dataset.json first: from here on the folder is visibly incomplete
    for name in (DATASET_FILE, SAMPLES_FILE, SHARDS_DIR, STATE_DIR):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def shard_sidecar(out: Path, k: int) -> Path:
    return out / STATE_DIR / f"shard-{k:05d}.json"


def remove_temporaries(out: Path) -> None:
    for p in (out / SHARDS_DIR).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_finished_shards(out: Path, shards: range, plan, fmt: str, log: Log) -> list[int]:
    """Shards of an interrupted build that are complete and whose sha256 still checks."""
    kept, dropped = [], []
    for k in shards:
        sidecar_path = shard_sidecar(out, k)
        shard_path = out / shard_relpath(k, fmt)
        if not sidecar_path.exists() or not shard_path.exists():
            continue
        try:
            sidecar = read_json(sidecar_path)
            ok = (sidecar["shard"]["sha256"] == sha256_path(shard_path)
                  and (sidecar["shard"]["start"], sidecar["shard"]["count"]) == tuple(plan[k]))
        except (DataError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(k)
        else:
            dropped.append(k)
            sidecar_path.unlink(missing_ok=True)
    log(f"resume: keeping {len(kept)} finished shard(s)"
        + (f", rebuilding {len(dropped)} whose hash did not check ({', '.join(map(str, dropped[:5]))})" if dropped else ""))
    return kept


def same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
