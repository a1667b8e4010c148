"""Deterministic procedural phantoms, so every command runs on a fresh machine without data.

- ``demo-brain``: 8 cases of 48 x 128 x 128 (slices x rows x cols), FLAIR-like MRI: a textured
  brain ellipsoid (grey/white matter, ventricles) on a constant background, a bright tumour with an
  irregular border in some slices, brain-only slices above and below it (the background pool) and
  empty slabs at both ends. Task: whole tumour; per-slice min-max, as for BraTS.
- ``demo-abdomen``: 6 cases of 32 x 128 x 128, CT-like HU values: body with fat, muscle wall and
  spine, the 8 Synapse organs as irregular blobs at plausible positions with their own HU,
  organ-free slices at both ends. Task: the 8 organs; HU window [-125, 275], as for Synapse.

Every case is generated from a seed derived from its id (crc32), so a case is identical on every
machine and run; generating one takes a few tens of milliseconds.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from shared.classmaps import BRATS_CLASS_NAMES, SYNAPSE_CLASS_NAMES, ClassMap
from shared.errors import DataError
from shared.intensity import CT_ABDOMEN, SLICE_MINMAX, apply_intensity
from shared.sources.base import Source
from shared.volume import Volume

GENERATOR_VERSION = 1


def _rng(kind: str, case_id: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{kind}/{case_id}/v{GENERATOR_VERSION}".encode()))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _radius(grid: tuple[np.ndarray, ...], centre, axes) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface)."""
    z, y, x = grid
    return np.sqrt(((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
                   + ((x - centre[2]) / axes[2]) ** 2)


class _DemoSource(Source):
    kind = ""
    shape: tuple[int, int, int] = (0, 0, 0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_cases = 0

    def __init__(self) -> None:
        super().__init__(None, {"generator_version": GENERATOR_VERSION})
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # all cases fit in ~40 MB

    def case_ids(self) -> list[str]:
        return [f"{self.kind}_{i:02d}" for i in range(self.n_cases)]

    def files(self, case_id: str) -> tuple[Path, ...]:
        self.check_case(case_id)
        return ()  # generated, no files: exemplar lists hash the generated arrays instead

    def num_slices(self, case_id: str) -> int:
        self.check_case(case_id)
        return self.shape[0]

    def check_case(self, case_id: str) -> None:
        if case_id not in self.case_ids():
            raise DataError(f"{self.name}: unknown case {case_id!r} (cases: {', '.join(self.case_ids())})")

    def load(self, case_id: str) -> Volume:
        self.check_case(case_id)
        if case_id not in self._cache:
            raw, label = self.generate(case_id)
            self._cache[case_id] = (apply_intensity(raw, self.intensity), label)
        image, label = (a.copy() for a in self._cache[case_id])  # callers may modify their copy
        sz, sy, sx = self.spacing
        affine = np.diag([sx, sy, sz, 1.0])  # NIfTI (i, j, k) = (col, row, slice)
        return self._volume(case_id, image, label, self.spacing, affine, (),
                            {"generated": True, "generator_version": GENERATOR_VERSION})

    def generate(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw (S, R, C) intensities (before the preset) and uint8 labels."""
        raise NotImplementedError


class DemoBrainSource(_DemoSource):
    name = "demo-brain"
    kind = "brain"
    task = "single"
    classmap = ClassMap.identity(BRATS_CLASS_NAMES)
    shape = (48, 128, 128)
    spacing = (3.0, 1.5, 1.5)
    n_cases = 8

    def __init__(self) -> None:
        super().__init__()
        self.intensity = dict(SLICE_MINMAX)

    def generate(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(self.name, case_id)
        S, R, C = self.shape
        grid = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(R, dtype=np.float32),
                           np.arange(C, dtype=np.float32), indexing="ij")
        centre = (S / 2 + rng.uniform(-1.5, 1.5), R / 2 + rng.uniform(-4, 4), C / 2 + rng.uniform(-4, 4))
        axes = (rng.uniform(17, 19), rng.uniform(48, 54), rng.uniform(38, 44))
        wobble = _smooth_noise(rng, self.shape, (2, 8, 8))
        r = _radius(grid, centre, axes) + 0.03 * wobble
        brain = r < 1.0
        texture = _smooth_noise(rng, self.shape, (1, 3, 3))
        # FLAIR-like: grey matter (outer shell) brighter than white matter, CSF in ventricles dark.
        raw = np.where(r > 0.78, 0.9, 0.2).astype(np.float32) + 0.25 * texture
        for side in (-1, 1):
            vent = _radius(grid, (centre[0] + 2, centre[1] - 4, centre[2] + side * 7),
                           (7, 14, rng.uniform(3, 5)))
            raw[vent < 1.0] = -1.2 + 0.1 * texture[vent < 1.0]
        # Tumour: an irregular bright blob in one hemisphere spanning 6-14 slices.
        side = rng.choice([-1, 1])
        t_centre = (centre[0] + rng.uniform(-5, 5), centre[1] + rng.uniform(-22, 18),
                    centre[2] + side * rng.uniform(12, 22))
        t_axes = (rng.uniform(3.5, 7), rng.uniform(9, 18), rng.uniform(8, 15))
        t_r = _radius(grid, t_centre, t_axes) + 0.18 * _smooth_noise(rng, self.shape, (1.5, 4, 4))
        tumour = (t_r < 1.0) & brain
        core = (t_r < 0.45) & brain
        raw[tumour] = 2.6 + 0.35 * texture[tumour]
        raw[core] = 1.4 + 0.3 * texture[core]  # necrotic core, less bright, still tumour
        raw += 0.06 * rng.standard_normal(self.shape).astype(np.float32)
        background = -2.5  # z-scored MRI: the background is the volume's minimum, constant
        raw = np.where(brain, raw, background).astype(np.float32)
        return raw, tumour.astype(np.uint8)


# organ index -> (centre (z, y, x), semi-axes (z, y, x), HU); rows 0 = anterior, cols 0 = patient right
_ORGANS: dict[int, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    5: ((17, 52, 40), (9, 22, 24), 60.0),     # liver
    6: ((20, 48, 86), (6, 13, 13), 25.0),     # stomach
    1: ((18, 80, 96), (5, 11, 8), 48.0),      # spleen
    2: ((12, 86, 42), (5, 9, 6), 150.0),      # right kidney (contrast)
    3: ((13, 86, 86), (5, 9, 6), 150.0),      # left kidney
    8: ((14, 68, 70), (3, 5, 18), 40.0),      # pancreas
    4: ((13, 42, 48), (3, 5, 5), 5.0),        # gallbladder
}


class DemoAbdomenSource(_DemoSource):
    name = "demo-abdomen"
    kind = "abdomen"
    task = "multi"
    classmap = ClassMap.identity(SYNAPSE_CLASS_NAMES)
    shape = (32, 128, 128)
    spacing = (5.0, 2.5, 2.5)
    n_cases = 6

    def __init__(self) -> None:
        super().__init__()
        self.intensity = dict(CT_ABDOMEN)

    def generate(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(self.name, case_id)
        S, R, C = self.shape
        grid = np.meshgrid(np.arange(S, dtype=np.float32), np.arange(R, dtype=np.float32),
                           np.arange(C, dtype=np.float32), indexing="ij")
        z, y, x = grid
        texture = _smooth_noise(rng, self.shape, (1, 2, 2))
        by, bx = 64 + rng.uniform(-3, 3), 64 + rng.uniform(-3, 3)
        ay, ax = rng.uniform(40, 46), rng.uniform(54, 60)
        body_r = np.sqrt(((y - by) / ay) ** 2 + ((x - bx) / ax) ** 2) + 0.01 * _smooth_noise(rng, self.shape, (2, 6, 6))
        raw = np.full(self.shape, -1000.0, dtype=np.float32)  # air
        raw[body_r < 1.0] = -100.0                             # subcutaneous fat
        raw[body_r < 0.9] = 45.0                               # muscle wall
        inner = body_r < 0.83
        raw[inner] = -60.0 + 25.0 * texture[inner]             # mesenteric fat and bowel
        spine = ((y - (by + 30)) ** 2 + (x - bx) ** 2) < 9.0 ** 2
        raw[spine] = 600.0
        raw[((y - (by + 30)) ** 2 + (x - bx) ** 2) < 3.5 ** 2] = 20.0  # spinal canal
        label = np.zeros(self.shape, dtype=np.uint8)
        shift = (rng.uniform(-1, 1), by - 64 + rng.uniform(-2, 2), bx - 64 + rng.uniform(-2, 2))
        wobble = _smooth_noise(rng, self.shape, (1, 4, 4))
        for organ, (centre, axes, hu) in _ORGANS.items():
            c = tuple(centre[i] + shift[i] + rng.uniform(-1.5, 1.5) * (i > 0) for i in range(3))
            a = tuple(v * rng.uniform(0.88, 1.12) for v in axes)
            mask = (_radius(grid, c, a) + 0.12 * wobble < 1.0) & inner
            raw[mask] = hu + 12.0 * texture[mask]
            label[mask] = organ
        # aorta: a tube in front of the spine through slices 5-27
        ac = (by + 17 + rng.uniform(-1, 1), bx + 5 + rng.uniform(-1, 1))
        aorta = (((y - ac[0]) ** 2 + (x - ac[1]) ** 2) < rng.uniform(4.5, 5.5) ** 2) & (z >= 5) & (z <= 27)
        raw[aorta] = 210.0 + 10.0 * texture[aorta]
        label[aorta] = 7
        raw += 10.0 * rng.standard_normal(self.shape).astype(np.float32)  # CT noise
        return raw.astype(np.float32), label
