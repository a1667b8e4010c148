"""Label-free masks for promptable pretraining (`train pretrain`): SAM's data engine in miniature.

Each slice (already at the model's input size, values in [0, 1]) is cut into regions by several
classic unsupervised segmenters, each one a *partition* (an integer label map, 0 = no region):

- ``felzenszwalb:<scale>``: Felzenszwalb-Huttenlocher graph segmentation (scikit-image), small
  scale = fine regions, large scale = coarse ones;
- ``slic:<n>``: SLIC superpixels (about n per slice) restricted to the scan's content;
- ``levels:<k>``: the content's intensities cut into k quantile bands, then the connected
  components of each band (bright lesions, dark ventricles, organs of one density).

Regions outside the scan's content (air / the zero background), smaller than ``min_region``
pixels or covering more than ``max_region_frac`` of the slice are dropped; the rest are renumbered
1..K (K <= 255, the largest kept). A training sample is (slice, one partition); the trainer's
prompt sampler then picks a random region and a random pixel of it, so the target is "the
region this click falls in" -- what SAM's automatic masks teach, at CPU scale.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("felzenszwalb", "slic", "levels")


@dataclass(frozen=True)
class AutoMaskConfig:
    """Which partitions to compute per slice and which regions to keep."""

    partitions: tuple[str, ...] = ("felzenszwalb:60", "felzenszwalb:250", "slic:24", "levels:3", "levels:5")
    content_threshold: float = 0.02   # pixels above this (of [0, 1]) are scan content
    min_content_frac: float = 0.05    # slices with less content are skipped (empty ends of a scan)
    min_region: int = 24              # pixels (at the model's input size)
    max_region_frac: float = 0.35     # a region larger than this share of the slice is dropped
    felzenszwalb_sigma: float = 0.5
    levels_sigma: float = 1.0         # Gaussian blur before the intensity bands (texture noise
                                      # would otherwise shatter them into specks)
    slic_compactness: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["partitions"] = list(self.partitions)
        return d

    @staticmethod
    def parse(name: str) -> tuple[str, float]:
        method, _, arg = name.partition(":")
        if method not in METHODS or not arg:
            raise ValueError(f"unknown partition {name!r}: expected one of "
                             f"{', '.join(m + ':<number>' for m in METHODS)}")
        return method, float(arg)


def content_mask(image: np.ndarray, cfg: AutoMaskConfig) -> np.ndarray:
    return image > cfg.content_threshold


def keep_regions(segments: np.ndarray, content: np.ndarray, cfg: AutoMaskConfig) -> np.ndarray:
    """Renumber `segments` (any non-negative ints) to uint8 regions 1..K, 0 elsewhere.

    Pixels outside `content` never belong to a region; regions outside the size limits are
    dropped; with more than 255 regions the largest 255 are kept. Vectorised: one bincount and
    one lookup table.
    """
    seg = np.where(content, segments.astype(np.int64) + 1, 0)
    counts = np.bincount(seg.ravel())
    counts[0] = 0
    ok = (counts >= cfg.min_region) & (counts <= cfg.max_region_frac * seg.size)
    ids = np.flatnonzero(ok)
    if ids.size > 255:
        ids = ids[np.argsort(-counts[ids], kind="stable")[:255]]
        ids.sort()
    lut = np.zeros(counts.size, np.uint8)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint8)
    return lut[seg]


def partition(image: np.ndarray, name: str, cfg: AutoMaskConfig,
              content: np.ndarray | None = None) -> np.ndarray:
    """One partition of a float image in [0, 1] as a uint8 region map (see the module doc)."""
    from skimage.measure import label as connected
    from skimage.segmentation import felzenszwalb, slic

    method, arg = AutoMaskConfig.parse(name)
    content = content_mask(image, cfg) if content is None else content
    if method == "felzenszwalb":
        seg = felzenszwalb(image, scale=arg, sigma=cfg.felzenszwalb_sigma, min_size=cfg.min_region)
    elif method == "slic":
        if not content.any():
            return np.zeros(image.shape, np.uint8)
        seg = slic(image, n_segments=int(arg), compactness=cfg.slic_compactness, mask=content,
                   channel_axis=None, start_label=1)
    else:  # levels: quantile bands of the content's intensities, then connected components
        k = int(arg)
        if not content.any():
            return np.zeros(image.shape, np.uint8)
        import cv2

        smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), cfg.levels_sigma) \
            if cfg.levels_sigma > 0 else image
        edges = np.quantile(smooth[content], np.linspace(0, 1, k + 1)[1:-1])
        bands = np.digitize(smooth, edges) + 1          # 1..k, so 0 stays free for "outside"
        seg = connected(np.where(content, bands, 0), background=0, connectivity=1)
    return keep_regions(seg, content, cfg)


def slice_partitions(image: np.ndarray, cfg: AutoMaskConfig) -> list[tuple[str, np.ndarray]]:
    """(name, region map) of every configured partition of one slice that has a region; an empty
    list when the slice has too little content (the empty ends of a scan)."""
    content = content_mask(image, cfg)
    if content.mean() < cfg.min_content_frac:
        return []
    maps = [(name, partition(image, name, cfg, content)) for name in cfg.partitions]
    return [(name, m) for name, m in maps if m.any()]
