"""Frozen-encoder training on CPU: image embeddings computed once per sample and cached on disk.

`train fit --frozen-encoder` trains only the prompt encoder and mask decoder (the image encoder
keeps its pretrained weights, so a sample's embedding never changes). Each sample of the shard
dataset is encoded once, through a CPU engine (train.model.engines), and stored as float16; the
training steps then read embeddings instead of images and skip the encoder, forward and
backward (~95 % of a LiteMedSAM step on CPU).

The cache is content-addressed: one folder per encoder (the sha256 of its weights, structure,
input size and input contract: :func:`encoder_key`), one ``.npy`` file per shard, named by the
shard's sha256 from dataset.json. A rebuilt dataset with other samples has other shard hashes;
the same shard under another path hits the cache. Files are written atomically (a killed run
leaves no file that looks complete) and checked for shape on read.

Size: LiteMedSAM's embedding is 256 x 64 x 64, 2 MiB per sample in float16.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shared.errors import ConfigError, DataError
from shared.fileio import atomic_writer

CACHE_ENV = "EXEMPLAR_SAM_EMBEDDING_CACHE"
FORMAT = "exemplar-sam-embeddings/1"


def default_cache_dir() -> Path:
    """``$EXEMPLAR_SAM_EMBEDDING_CACHE``, else ``$XDG_CACHE_HOME/exemplar-sam/embeddings``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "exemplar-sam" / "embeddings"


def encoder_key(model) -> str:
    """sha256 naming what an embedding depends on: the encoder's weights and structure, the input
    size and the input contract (resize, normalisation) of the PromptSAM `model`."""
    from train.model.engines import hash_module

    h = hashlib.sha256()
    h.update(f"{FORMAT} img_size {model.img_size} resize {model.resize} normalise {model.normalise}\n".encode())
    hash_module(h, model.sam.image_encoder)
    return h.hexdigest()


@dataclass
class EmbeddingCache:
    """Where the embeddings of one encoder live: ``root/<encoder key[:32]>/<shard sha256>.npy``."""

    root: Path
    key: str

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.key[:32]

    def path(self, shard_sha256: str) -> Path:
        if not shard_sha256:
            raise DataError("a shard without a sha256 in dataset.json cannot be cached by content")
        return self.folder / f"{shard_sha256}.npy"

    def load(self, shard_sha256: str, count: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """The shard's (count, *shape) float16 embeddings, memory-mapped; None if not cached."""
        path = self.path(shard_sha256)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: damaged embedding cache file ({exc}); delete it to recompute") from None
        if arr.shape != (count, *shape) or arr.dtype != np.float16:
            raise DataError(f"{path}: holds {arr.dtype} {arr.shape}, expected float16 {(count, *shape)}; "
                            "delete it to recompute")
        return arr

    def save(self, shard_sha256: str, embeddings: np.ndarray) -> Path:
        path = self.path(shard_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.save(fh, np.ascontiguousarray(embeddings, dtype=np.float16))
        return path


@dataclass
class EmbeddingReport:
    shards: int
    computed: int          # samples encoded now
    reused: int            # samples found in the cache
    seconds: float
    bytes: int
    folder: Path


def embedding_shape(model) -> tuple[int, int, int]:
    """(C, h, w) of the model's image embedding."""
    h, w = (int(v) for v in model.sam.prompt_encoder.image_embedding_size)
    return (int(model.sam.prompt_encoder.embed_dim), h, w)


def build_embeddings(ds, model, cache: EmbeddingCache, *, engine: Callable[[torch.Tensor], torch.Tensor],
                     batch_size: int = 8, progress: bool = True,
                     say: Callable[[str], None] | None = None) -> EmbeddingReport:
    """Encode every sample of shard dataset `ds` not in `cache` yet; returns what was done.

    Each sample is resized into the model's input exactly as the training batches are
    (train.resize.InputGeometry), preprocessed by the model (`model.preprocess`) and encoded by
    `engine` (a train.model.engines runner or the model's own encoder).
    """
    from tqdm import tqdm

    from train.resize import InputGeometry

    shape = embedding_shape(model)
    geometry = InputGeometry(model.img_size, model.resize)
    computed = reused = 0
    t0 = time.perf_counter()
    todo = [k for k in range(ds.num_shards)
            if cache.load(_sha(ds, k), ds.shard_range(k)[1], shape) is None]
    reused = sum(ds.shard_range(k)[1] for k in range(ds.num_shards) if k not in todo)
    total = sum(ds.shard_range(k)[1] for k in todo)
    if say and total:
        say(f"frozen encoder: encoding {total} samples of {len(todo)} shard(s) once "
            f"({reused} cached) into {cache.folder}")
    bar = tqdm(total=total, unit="sample", desc="embed", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress else True)
    for k in todo:
        images, _, sizes = ds.shard_arrays(k)
        out = np.empty((len(images), *shape), np.float16)
        x = np.empty((batch_size, 1, model.img_size, model.img_size), np.float32)
        for b0 in range(0, len(images), batch_size):
            n = min(batch_size, len(images) - b0)
            for j in range(n):
                h, w = (int(v) for v in sizes[b0 + j])
                geometry.image_into(images[b0 + j, :h, :w], x[j, 0])
            with torch.inference_mode():
                emb = engine(model.preprocess(torch.from_numpy(x[:n])))
            out[b0:b0 + n] = emb.float().cpu().numpy().astype(np.float16)
            bar.update(n)
        cache.save(_sha(ds, k), out)
        computed += len(images)
    bar.close()
    nbytes = sum(cache.path(_sha(ds, k)).stat().st_size for k in range(ds.num_shards))
    return EmbeddingReport(ds.num_shards, computed, reused, time.perf_counter() - t0, nbytes, cache.folder)


def _sha(ds, k: int) -> str:
    return str(ds.shards[k].get("sha256", ""))


def open_cached(ds, cache: EmbeddingCache, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Memory-mapped embeddings of every shard (all must be cached)."""
    out = []
    for k in range(ds.num_shards):
        arr = cache.load(_sha(ds, k), ds.shard_range(k)[1], shape)
        if arr is None:
            raise DataError(f"{cache.folder}: shard {k} of the dataset has no cached embeddings "
                            "(run train fit --frozen-encoder, which computes them first)")
        out.append(arr)
    return out


def check_frozen_encoder(cfg: Any) -> None:
    """One-line errors for settings a frozen-encoder run cannot honour (augmentation is switched
    off by train.fit_setup.safe_augment)."""
    if cfg.prompt == "none":
        raise ConfigError("--frozen-encoder is for prompted training (point, box or mixed)")


class CachingEncoder:
    """An encoder runner that keeps each input's embedding on disk, keyed by the sha256 of the
    preprocessed input bytes under the encoder key: evaluating several decoders on one frozen
    encoder (zero-shot, --frozen-encoder runs) encodes every test slice once.

    `encode` maps a CPU float32 (B, 3, S, S) tensor to (B, C, h, w) float32, as the engines do;
    embeddings are stored in float32 (exact reuse: the masks equal those of an uncached run).
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], folder: str | Path, key: str):
        self.encode, self.key = encode, key
        self.folder = Path(folder) / "slices" / key[:32]
        self.name = getattr(encode, "name", "torch")
        self.hits = self.misses = 0

    def _path(self, x: torch.Tensor) -> Path:
        digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        paths = [self._path(xi) for xi in x]
        found: dict[int, np.ndarray] = {}
        for i, p in enumerate(paths):
            if p.is_file():
                try:
                    found[i] = np.load(p)
                except (OSError, ValueError):
                    pass   # damaged: computed again and rewritten below
        todo = [i for i in range(len(paths)) if i not in found]
        if todo:
            fresh = self.encode(x[todo]).float().cpu().numpy()
            for j, i in enumerate(todo):
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                with atomic_writer(paths[i]) as fh:
                    np.save(fh, fresh[j])
                found[i] = fresh[j]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        return torch.from_numpy(np.stack([found[i] for i in range(len(paths))]))
