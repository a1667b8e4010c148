"""What a dataset build is: its configuration, its shard plan, the resolved :class:`Job`.

A :class:`BuildConfig` holds every option that defines a dataset's content (``--workers``,
``--part`` and ``--resume`` do not); :mod:`synth.building.jobs` resolves it into a :class:`Job` (source,
exemplars, background pool, producer) and :func:`synth.building.run.run_job` writes the job. The shard
plan cuts the sample range into shards of ``shard_size`` samples; a :class:`Part` (``--part
i/n``) is a contiguous, shard-aligned slice of it.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from shared.errors import ConfigError
from shared.manifest import dumps
from shared.shards import IMAGE_DTYPES, SHARD_FORMATS
from synth.selection.background_pool import DEFAULT_POOL_SIZE
from synth.building.producers import Producer

KINDS = ("synthesized", "exemplars", "all-slices", "volumes")
DEFAULT_SHARD_SIZE = 256
DEFAULT_NUM_SAMPLES = {"brats": 4500, "synapse": 1800, "transunet": 1800}
# Config keys that name paths on this machine: recorded, but not part of the build identity, so
# parts built on machines with different mounts of the same data can be merged.
PATH_KEYS = ("root", "exemplar_list", "split_file", "source_config", "synthesis_config")

Log = Callable[[str], None]


def log_to_stderr(msg: str) -> None:
    """The default ``log`` of builds: one line to stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


def default_num_samples(dataset: str, task: str) -> int:
    """The paper's fixed training-set sizes: 4500 (BraTS, single target), 1800 (Synapse, organs)."""
    if dataset in DEFAULT_NUM_SAMPLES:
        return DEFAULT_NUM_SAMPLES[dataset]
    return 4500 if task == "single" else 1800


@dataclass
class BuildConfig:
    """Everything that defines a dataset's content (workers/part/resume do not)."""

    kind: str = "synthesized"
    dataset: str = "demo-brain"
    root: str | None = None
    modality: str = "flair"
    intensity: Any = None  # --intensity: a preset replacing the source's (brats, nifti); None = its own
    source_config: str | None = None
    split: str = "all"
    split_file: str | None = None
    exemplars: str | None = None  # selection spec "150" / "1%"
    exemplar_list: str | None = None  # path of a `synth select` output
    min_pixels: int | None = None
    selection_seed: int | None = None
    exclude_exemplars: list[str] = field(default_factory=list)  # "CASE:SLICE"
    num_samples: int | None = None
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    format: str = "zarr"
    image_dtype: str = "float16"
    synthesis_config: str | None = None
    recipe: str = "extended"  # synthesis recipe (synth.synthesis.config.RECIPES), before --synthesis-config
    synthesis: dict[str, Any] | None = None  # the resolved synthesis config (recorded in full)
    pool_size: int | None = DEFAULT_POOL_SIZE  # background pool: seeded sample above this (synth/selection/background_pool.py)
    spacing: float | None = None  # --spacing: in-plane mm every slice is resampled to; None = native

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["spacing"] is None:  # native builds keep the manifests (and build ids) they had before
            del d["spacing"]
        return d

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown build kind {self.kind!r}")
        if self.format not in SHARD_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(SHARD_FORMATS)}, got {self.format!r}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(IMAGE_DTYPES)}, got {self.image_dtype!r}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.pool_size is not None and self.pool_size < 0:
            raise ConfigError(f"--pool-size must be 0 (no limit) or more, got {self.pool_size}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.kind in ("synthesized", "exemplars"):
            if (self.exemplars is None) == (self.exemplar_list is None):
                raise ConfigError("give exactly one of --exemplars N|P% and --exemplar-list FILE")


@dataclass(frozen=True)
class Part:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Part | None":
        if text is None:
            return None
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ConfigError(f"--part must look like i/n (e.g. 0/8), got {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"--part {text}: need 0 <= i < n")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def plan_shards(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """(start, count) of every shard of the whole dataset."""
    return [(s, min(shard_size, num_samples - s)) for s in range(0, num_samples, shard_size)]


def part_shards(num_shards: int, part: Part | None) -> range:
    """Shard indices of a part: shard-aligned, contiguous, as even as possible."""
    if part is None:
        return range(num_shards)
    if part.count > num_shards:
        raise ConfigError(f"--part {part}: the dataset has only {num_shards} shard(s); use at most "
                          f"{num_shards} parts or a smaller --shard-size")
    return range(part.index * num_shards // part.count, (part.index + 1) * num_shards // part.count)


def count_samples(plan: list[tuple[int, int]], shards: Iterable[int]) -> int:
    return sum(plan[k][1] for k in shards)


def part_info(part: Part | None, plan, shards: range) -> dict[str, Any] | None:
    """What dataset.json records of a part: its index, sample range and shard range."""
    if part is None:
        return None
    start = plan[shards.start][0]
    stop = plan[shards.stop - 1][0] + plan[shards.stop - 1][1]
    return {"index": part.index, "count": part.count, "start": start, "stop": stop,
            "total": plan[-1][0] + plan[-1][1], "shards": [shards.start, shards.stop]}


def identity_key(identity: dict[str, Any]) -> str:
    """The build key: sha256 of the canonical JSON of a job's identity (what decides its bytes)."""
    return hashlib.sha256(dumps(identity).encode()).hexdigest()


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ (for 'differs in: ...' messages)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out += diff_keys(a[k], b[k], f"{prefix}{k}.")
            else:
                out.append(prefix + k)
    return out


@dataclass
class BuildSummary:
    out: Path
    num_samples: int  # samples in this build (or part)
    built: int  # samples written now (resume skips finished shards)
    seconds: float
    bytes_written: int
    kept_shards: int = 0
    already_complete: bool = False
    # what the end-of-build report reads of each sample's synthesis record (synth.audit.info.placement_
    # digest), in sample order, when every shard was built now; None after a resume keeps shards
    placement: list[dict[str, Any]] | None = None

    def line(self) -> str:
        if self.already_complete:
            return f"{self.out}: already complete ({self.num_samples} samples), nothing to do"
        rate = self.built / self.seconds if self.seconds > 0 else float("inf")
        kept = f" ({self.kept_shards} shard(s) kept from the interrupted build)" if self.kept_shards else ""
        return (f"built {self.built} samples in {self.seconds:.2f} s, {rate:.0f} samples/s, "
                f"{self.bytes_written / 1e6:.1f} MB written -> {self.out}{kept}")


@dataclass
class Job:
    """A fully resolved build: what to write, where, and the manifest fields that go with it."""

    out: Path
    config: BuildConfig
    producer: Producer
    num_samples: int  # of the whole dataset
    class_names: tuple[str, ...]
    task: str
    source: dict[str, Any]
    fingerprint: dict[str, Any]
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    background_pool: list[dict[str, Any]] = field(default_factory=list)
    exemplar_list_meta: dict[str, Any] = field(default_factory=dict)
    volumes: list[dict[str, Any]] | None = None  # for kind "volumes": id, start, count, slices

    def identity(self) -> dict[str, Any]:
        config = {k: v for k, v in self.config.to_dict().items() if k not in PATH_KEYS}
        source = {k: v for k, v in self.source.items() if k != "root"}
        return {"kind": self.config.kind, "config": config, "source": source, "num_samples": self.num_samples,
                "fingerprint": self.fingerprint, "exemplars": self.exemplars,
                "background_pool": self.background_pool, "class_names": list(self.class_names)}

