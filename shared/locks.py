"""The lock of a dataset folder: ``DIR/.lock``, held with flock(2).

A build (``synth build`` / ``pack`` / ``merge``) holds it exclusively while it writes DIR; a
reader (:func:`shared.shards.open_dataset`, so ``train fit``/``eval``, ``synth verify``) holds it
shared while it reads. So a rebuild cannot start under a running fit, and a reader cannot open a
folder that is being rewritten.

Why flock and not "create the file with O_EXCL": the kernel drops a flock when its holder dies
(kill -9, out of memory), so a stale lock is never "taken over" by read-check-unlink steps that
two processes can interleave; whoever gets the flock holds the lock. The file is removed by the
last holder that can upgrade to an exclusive lock; every acquirer checks after locking that the
path still names the inode it locked (and starts again if not), so removing it is safe.

The builder also writes its pid and host into the file while it holds it (for messages and for
noticing a build that was killed); a finished build empties it before letting go.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from shared.errors import DataError
from shared.fileio import read_json

LOCK_FILE = ".lock"
# How often a shared (reader) lock is tried again while it is busy: ~1 s in all, far longer
# than a releasing reader's exclusive moment, far shorter than any build.
SHARED_RETRIES = 20


class LockBusy(Exception):
    """The lock is held in a conflicting mode by another process (or another open of it)."""


def _open_and_lock(path: Path, mode: int, *, create: bool) -> int | None:
    """fd of ``path`` flocked with ``mode`` (non-blocking), or None when the file cannot be opened
    (a read-only folder without a lock file). Raises LockBusy when the lock is held."""
    busy_tries = 0
    for _attempt in range(50 + SHARED_RETRIES):
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
                raise
            if mode & fcntl.LOCK_EX:
                raise
            try:  # a reader of a read-only copy: a shared lock needs only read access
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if mode & fcntl.LOCK_SH and busy_tries < SHARED_RETRIES:
                # A reader that lets go upgrades its shared lock to exclusive for a moment, to see
                # whether it is the last one and may remove the file: not a build. Look again.
                busy_tries += 1
                time.sleep(0.005 * busy_tries)
                continue
            raise LockBusy(str(path)) from None
        except OSError:  # a file system without flock: no lock, the generation check remains
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed or replaced between open and flock: lock the current file
    raise LockBusy(str(path))


class FolderLock:
    """``DIR/.lock`` held exclusively (``shared=False``, a build) or shared (a reader)."""

    def __init__(self, folder: str | Path, *, shared: bool):
        self.path = Path(folder) / LOCK_FILE
        self.shared = shared
        self.fd: int | None = None
        self.pid = 0

    @property
    def held(self) -> bool:
        return self.fd is not None and self.pid == os.getpid()

    def acquire(self) -> "FolderLock":
        """Take the lock (LockBusy if another process holds it in a conflicting mode)."""
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        self.fd = _open_and_lock(self.path, mode, create=True)
        self.pid = os.getpid()
        return self

    def owner(self) -> dict[str, Any]:
        """What the builder holding (or last holding) the lock wrote: {"pid", "host"} or {}."""
        try:
            return read_json(self.path, what="lock file", expect=dict)
        except DataError:  # no owner recorded (emptied by a finished build), gone, or half-written
            return {}

    def write_owner(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)

    def release(self) -> None:
        """Let go; the last holder removes the file. A forked child never releases its parent's lock."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if self.pid != os.getpid():
            return  # inherited over fork: the open file (and its lock) belong to the parent
        try:
            if not self.shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else holds it: remove the file
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    self.path.unlink()
            except FileNotFoundError:
                pass
        except OSError:
            pass  # another holder (or a read-only folder): it stays
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:  # a pickled copy (spawned worker) holds nothing
        return {"path": self.path, "shared": self.shared, "fd": None, "pid": 0}
