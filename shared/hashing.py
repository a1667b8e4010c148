"""sha256 helpers shared by the shard writer, the manifests and `synth verify`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

_BLOCK = 1 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """sha256 of an array's raw bytes in C order (the dtype as given; no header, no shape)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: str | Path) -> list[Path]:
    """All regular files under ``root``, sorted by their '/'-joined relative path."""
    root = Path(root)
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            files.append(Path(dirpath) / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def sha256_tree(root: str | Path) -> str:
    """sha256 of a directory: for each file in sorted relative-path order, its path then contents.

    Path and content are length-prefixed so that moving bytes between a name and a file, or
    between two files, changes the hash.
    """
    root = Path(root)
    h = hashlib.sha256()
    for path in tree_files(root):
        rel = path.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little"))
        h.update(rel)
        h.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while chunk := f.read(_BLOCK):
                h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory tree (see :func:`sha256_tree`)."""
    path = Path(path)
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def path_bytes(path: str | Path) -> int:
    """Size on disk in bytes of a file or of all files under a directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in tree_files(path))
    return path.stat().st_size
