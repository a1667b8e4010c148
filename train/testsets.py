"""Test volumes for `train eval`: packed shards (`synth pack`) or a source folder, loaded lazily."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from shared import open_dataset
from shared.errors import DataError
from shared.shards.remote import is_remote
from shared.sources import open_source
from shared.splits import resolve_split


@dataclass
class EvalVolume:
    """One test volume: arrays (S, R, C) at the source resolution and its geometry."""

    volume_id: str
    image: np.ndarray  # float32 (S, R, C) in [0, 1]
    label: np.ndarray  # uint8 (S, R, C)
    spacing: tuple[float, float, float]  # mm along (S, R, C)
    affine: np.ndarray  # 4x4 of the source NIfTI
    geometry_known: bool = True  # False: spacing is a 1 mm placeholder (transunet), HD95 in voxels


@dataclass
class TestSet:
    """Where the test volumes come from, and a lazy iterator over them."""

    description: dict  # what summary.json records under "dataset"
    class_names: tuple[str, ...]
    task: str
    volume_ids: list[str]
    load: Callable[[str], EvalVolume]
    geometry_known: bool = True  # False: the source has no voxel spacing (HD95 only in voxels)

    def __iter__(self) -> Iterator[EvalVolume]:
        for vid in self.volume_ids:
            yield self.load(vid)


def open_shards_testset(directory: str | Path) -> TestSet:
    """Packed test volumes written by `synth pack` (dataset.json with a ``volumes`` list)."""
    ds = open_dataset(directory)
    volumes = ds.volumes
    if not volumes:
        raise DataError(f"{directory}: holds no packed volumes (kind {ds.kind!r}); "
                        "write test volumes with `synth pack --split test --out DIR`")
    by_id = {str(v["id"]): v for v in volumes}

    def load(vid: str) -> EvalVolume:
        v = by_id[vid]
        image, label = ds.volume_arrays(vid)
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label, dtype=np.uint8)
        slices = list(v.get("slices") or range(len(image)))
        shape = tuple(int(s) for s in v.get("shape") or image.shape)
        if len(slices) != shape[0]:  # a subset of slices was packed: rebuild the full volume
            full_i = np.zeros(shape, np.float32)
            full_l = np.zeros(shape, np.uint8)
            full_i[slices], full_l[slices] = image, label
            image, label = full_i, full_l
        return EvalVolume(vid, image, label, tuple(float(s) for s in v["spacing"]),
                          np.asarray(v["affine"], dtype=np.float64))

    source = ds.info.get("source") or {}
    path = directory if is_remote(directory) else str(Path(directory).resolve())
    description = {"kind": "shards", "path": path, "source": source}
    return TestSet(description, tuple(ds.class_names), ds.task, list(by_id), load,
                   geometry_known=source_geometry_known(source))


def source_geometry_known(source: dict) -> bool:
    """Whether a source (its describe() dict) has real voxel spacings.

    The TransUNet files keep no geometry (shared/sources/transunet.py reports 1 mm placeholders,
    ``meta["geometry_known"] = False``); packed shards keep only the source's description.
    """
    return source.get("geometry_known", source.get("name") != "transunet") is not False


def open_source_testset(dataset: str, root: str | Path | None, split: str, *, modality: str = "flair",
                        config: str | Path | None = None, intensity=None) -> TestSet:
    """Volumes read straight from a source folder through shared.sources / shared.splits
    (``intensity``: a preset replacing the source's, for brats and nifti)."""
    # read as stored: `train eval --spacing` resamples (and maps the predictions back) itself
    source = open_source(dataset, root, modality=modality, config=config, intensity=intensity, spacing=None)
    ids = list(resolve_split(source, split))
    if not ids:
        raise DataError(f"{dataset} source at {root}: split {split!r} holds no volumes")

    def load(vid: str) -> EvalVolume:
        vol = source.load(vid)
        return EvalVolume(vol.volume_id, np.asarray(vol.image, np.float32), np.asarray(vol.label, np.uint8),
                          tuple(float(s) for s in vol.spacing), np.asarray(vol.affine, np.float64))

    description = {"kind": "source", "split": split, "source": source.describe()}
    return TestSet(description, tuple(source.class_names), source.task, ids, load,
                   geometry_known=source_geometry_known(description["source"]))
